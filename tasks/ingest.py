"""Ingest tasks: import precomputed embeddings into shard-aligned stores."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso.stages import ingest as ingest_stage

from ._retry import TASK_OPTIONS


@task(name="prepare-input", **TASK_OPTIONS)
def prepare_input(url: str, store_url_for: Any, **kwargs: Any) -> tuple[str, str, list[int]]:
    return ingest_stage.prepare_input(url, store_url_for, **kwargs)


@task(name="import-shard", **TASK_OPTIONS)
def import_shard(url: str, store_url: str, shard: int, storage_options: dict[str, Any], ids: str = "auto") -> dict[str, Any]:
    return ingest_stage.import_shard(url, store_url, shard, storage_options, ids)


@task(name="check-unique-ids", **TASK_OPTIONS)
def check_unique_ids(store_url: str, storage_options: dict[str, Any], what: str) -> None:
    ingest_stage.check_unique_ids(store_url, storage_options, what=what)
