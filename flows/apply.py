"""Apply stage: substitutes for every text shard; each whole Zarr shard is written by one task."""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso.config import Settings
from aniso.io.rows import StoreRef, describe, open_rows
from aniso.stages import apply as apply_stage
from aniso.stages.carry import carry_entries
from aniso.tasks.apply import apply_shards, carry_or_apply_shards

from ._common import map_shards


def apply_model(model_url: str, text: StoreRef, subs_url: str, settings: Settings, attrs: dict[str, Any],
                carry_from: tuple[str, dict[str, Any], str | None] | None = None) -> list[int]:
    """Write the substitutes store (resuming: completed shards are skipped); returns shards written.

    ``carry_from``: ``(data URL, manifest, run store URL or None)`` of an earlier version made with
    the same model; its shards whose input is unchanged are carried over instead of recomputed
    (:mod:`aniso.stages.carry`).
    """
    options = settings.storage.fs_options()
    pending = apply_stage.prepare_substitutes(subs_url, text.url, attrs=attrs, dtype=settings.store.output_dtype,
                                              compressor=settings.store.compressor, storage_options=options)
    entries = carry_entries(carry_from[0], carry_from[1], subs_url, options) if carry_from else {}
    if entries:
        map_shards(carry_or_apply_shards, "apply", pending, rows=text.shard_sizes(pending), batched=True,
                   model_url=model_url, text_store_url=text.url, subs_url=subs_url, storage_options=options,
                   prev_data_url=carry_from[0], prev_entries={str(k): v for k, v in entries.items()},
                   prev_subs_url=carry_from[2])
        return pending
    map_shards(apply_shards, "apply", pending, rows=text.shard_sizes(pending), batched=True,
               model_url=model_url, text_store_url=text.url, subs_url=subs_url, storage_options=options)
    return pending


@flow(name="apply")
def apply(model_url: str, text_store: str, subs_url: str, settings: Settings) -> list[int]:
    """Standalone apply flow."""
    text = describe(open_rows(text_store, settings.storage.fs_options()))
    return apply_model(model_url, text, subs_url, settings, attrs={})
