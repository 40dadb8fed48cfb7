"""Ingest stage: precomputed embeddings (npy, clip-retrieval folders, Zarr) → shard-aligned stores."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow

from aniso.stages import ingest as ingest_stage
from aniso.config import Settings
from aniso.io.layout import DatasetLayout
from aniso.tasks.ingest import check_unique_ids, import_shard, prepare_input

from ._common import map_shards, store_shard_rows


def _input_store_url(layout: DatasetLayout, modality: str, fingerprint: str) -> str:
    return layout.embeddings(f"input-{fingerprint[:16]}", modality)


def ingest_inputs(inputs: list[tuple[str, str]], layout: DatasetLayout, settings: Settings) -> list[tuple[str, str]]:
    """Open embedding inputs ``[(url, modality), ...]`` for the later stages; returns
    ``[(store_url, fingerprint), ...]`` in the same order.

    ``.npy`` / clip-retrieval inputs are read in place (a descriptor, no copy), aniso stores used
    as they are. Opening an input reads all of it once for its content fingerprint, so the
    inputs are opened side by side, one task each.
    """
    options = settings.storage.fs_options()
    futures = [prepare_input.submit(url, partial(_input_store_url, layout, modality), modality=modality,
                                    chunk_rows=settings.store.chunk_rows, shard_rows=settings.store.shard_rows,
                                    storage_options=options, ids=settings.corpus.embedding_ids)
               for url, modality in inputs]
    opened = []
    for (url, modality), future in zip(inputs, futures):
        store_url, fingerprint, pending = future.result()
        if pending:
            map_shards(import_shard, f"ingest {modality}", pending, rows=store_shard_rows(store_url, options, pending),
                       url=url, store_url=store_url, storage_options=options, ids=settings.corpus.embedding_ids)
        if pending or ingest_stage.needs_id_check(store_url, options):
            check_unique_ids.submit(store_url, options, f"{modality} input {url}").result()
        opened.append((store_url, fingerprint))
    return opened


def ingest_embeddings(url: str, modality: str, layout: DatasetLayout, settings: Settings) -> tuple[str, str]:
    """Open one input for the later stages (:func:`ingest_inputs`); returns ``(store_url, fingerprint)``."""
    return ingest_inputs([(url, modality)], layout, settings)[0]


@flow(name="ingest")
def ingest(url: str, modality: str, settings: Settings) -> dict[str, Any]:
    """Standalone ingest flow."""
    store_url, fingerprint = ingest_embeddings(url, modality, DatasetLayout(settings.storage.root, settings.storage.dataset), settings)
    return {"store": store_url, "fingerprint": fingerprint}
