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


@task(name="carry-or-apply-shards", **TASK_OPTIONS)
def carry_or_apply_shards(model_url: str, text_store_url: str, subs_url: str, shards: list[int],
                          storage_options: dict[str, Any], prev_data_url: str,
                          prev_entries: dict[str, dict[str, Any]], prev_subs_url: str | None = None) -> list[dict[str, Any]]:
    """Frozen-model runs: carry each shard over from the earlier version when its input is
    unchanged, else apply the model (:mod:`aniso.stages.carry`)."""
    from aniso.stages.carry import carry_or_apply_shard

    return [carry_or_apply_shard(model_url, text_store_url, subs_url, s, storage_options, prev_data_url,
                                 prev_entries.get(str(s)), prev_subs_url) for s in shards]
