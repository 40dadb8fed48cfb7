"""Apply task: one shard of text → one whole shard of substitutes."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso import pipeline

from ._retry import TASK_OPTIONS


@task(name="apply-shard", **TASK_OPTIONS)
def apply_shard(model_url: str, text_store_url: str, subs_url: str, shard: int,
                storage_options: dict[str, Any]) -> dict[str, Any]:
    return pipeline.apply_shard(model_url, text_store_url, subs_url, shard, storage_options)
