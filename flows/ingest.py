"""Ingest stage: precomputed embeddings (npy, clip-retrieval folders, Zarr) → shard-aligned stores."""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso import pipeline
from aniso.config import Settings
from aniso.layout import DatasetLayout
from aniso.tasks.ingest import check_unique_ids, import_shard

from ._common import map_shards, store_shard_rows


def ingest_embeddings(url: str, modality: str, layout: DatasetLayout, settings: Settings) -> tuple[str, str]:
    """Open one input for the later stages: ``.npy`` / clip-retrieval inputs are read in place
    (a descriptor, no copy), aniso stores used as they are; returns ``(store_url, fingerprint)``."""
    options = settings.storage.fs_options()
    store_url, fingerprint, pending = pipeline.prepare_input(
        url, lambda fp: layout.embeddings(f"input-{fp[:16]}", modality), modality=modality,
        chunk_rows=settings.store.chunk_rows, shard_rows=settings.store.shard_rows, storage_options=options,
        ids=settings.corpus.embedding_ids,
    )
    if pending:
        map_shards(import_shard, f"ingest {modality}", pending, rows=store_shard_rows(store_url, options, pending),
                   url=url, store_url=store_url, storage_options=options, ids=settings.corpus.embedding_ids)
    if pending or pipeline.needs_id_check(store_url, options):
        check_unique_ids.submit(store_url, options, f"{modality} input {url}").result()
    return store_url, fingerprint


@flow(name="ingest")
def ingest(url: str, modality: str, settings: Settings) -> dict[str, Any]:
    """Standalone ingest flow."""
    store_url, fingerprint = ingest_embeddings(url, modality, DatasetLayout(settings.storage.root, settings.storage.dataset), settings)
    return {"store": store_url, "fingerprint": fingerprint}
