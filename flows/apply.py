"""Apply stage: substitutes for every text shard; each whole Zarr shard is written by one task."""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso.stages import apply as apply_stage
from aniso.config import Settings
from aniso.tasks.apply import apply_shards

from ._common import map_shards, store_shard_rows


def apply_model(model_url: str, text_store: str, subs_url: str, settings: Settings, attrs: dict[str, Any]) -> list[int]:
    """Write the substitutes store (resuming: completed shards are skipped); returns shards written."""
    options = settings.storage.fs_options()
    pending = apply_stage.prepare_substitutes(subs_url, text_store, attrs=attrs, dtype=settings.store.output_dtype,
                                           compressor=settings.store.compressor, storage_options=options)
    map_shards(apply_shards, "apply", pending, rows=store_shard_rows(text_store, options, pending), batched=True,
               model_url=model_url, text_store_url=text_store, subs_url=subs_url, storage_options=options)
    return pending


@flow(name="apply")
def apply(model_url: str, text_store: str, subs_url: str, settings: Settings) -> list[int]:
    """Standalone apply flow."""
    return apply_model(model_url, text_store, subs_url, settings, attrs={})
