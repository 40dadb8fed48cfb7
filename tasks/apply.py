"""Apply task: shards of text → whole shards of substitutes (each shard written by one task)."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso.stages import apply as apply_stage

from ._retry import TASK_OPTIONS


@task(name="apply-shards", **TASK_OPTIONS)
def apply_shards(model_url: str, text_store_url: str, subs_url: str, shards: list[int],
                 storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    return [apply_stage.apply_shard(model_url, text_store_url, subs_url, s, storage_options) for s in shards]
