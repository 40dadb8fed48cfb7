"""Statistics tasks: per-shard moments (several shards per task) and the tree reduction's merge nodes."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso.stages import statistics as statistics_stage

from ._retry import TASK_OPTIONS


@task(name="shard-moments", **TASK_OPTIONS)
def shard_moments(store_url: str, shards: list[int], storage_options: dict[str, Any], kind: str = "full") -> list[str]:
    return [statistics_stage.shard_moments(store_url, s, storage_options, kind) for s in shards]


@task(name="merge-moments", **TASK_OPTIONS)
def merge_moments(part_urls: list[str], out_url: str, storage_options: dict[str, Any]) -> str:
    return statistics_stage.reduce_moments(part_urls, out_url, storage_options)
