"""Ingest stage: precomputed embeddings (npy, clip-retrieval folders, Zarr) → shard-aligned stores."""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso.config import Settings
from aniso.io.layout import DatasetLayout
from aniso.io.rows import StoreRef
from aniso.stages import ingest as ingest_stage
from aniso.tasks.ingest import check_unique_ids, import_shard, prepare_input

from ._common import map_shards


def ingest_inputs(inputs: list[tuple[str, str]], layout: DatasetLayout, settings: Settings) -> list[StoreRef]:
    """Open embedding inputs ``[(url, modality), ...]`` for the later stages; returns their
    :class:`~aniso.io.rows.StoreRef` in the same order.

    ``.npy`` / clip-retrieval inputs are read in place (a descriptor, no copy), aniso stores used
    as they are. Opening an input reads all of it once for its content fingerprint, so the
    inputs are opened side by side, one task each.
    """
    options = settings.storage.fs_options()
    futures = [prepare_input.submit(url, layout, modality=modality,
                                    chunk_rows=settings.store.chunk_rows, shard_rows=settings.store.shard_rows,
                                    storage_options=options, ids=settings.corpus.embedding_ids)
               for url, modality in inputs]
    opened = []
    for (url, modality), future in zip(inputs, futures):
        ref, pending = future.result()
        if pending:
            map_shards(import_shard, f"ingest {modality}", pending, rows=ref.shard_sizes(pending),
                       url=url, store_url=ref.url, storage_options=options, ids=settings.corpus.embedding_ids)
        if pending or ingest_stage.needs_id_check(ref.url, options):
            check_unique_ids.submit(ref.url, options, f"{modality} input {url}").result()
        opened.append(ref)
    return opened


def ingest_embeddings(url: str, modality: str, layout: DatasetLayout, settings: Settings) -> StoreRef:
    """Open one input for the later stages (:func:`ingest_inputs`)."""
    return ingest_inputs([(url, modality)], layout, settings)[0]


@flow(name="ingest")
def ingest(url: str, modality: str, settings: Settings) -> dict[str, Any]:
    """Standalone ingest flow."""
    ref = ingest_embeddings(url, modality, DatasetLayout(settings.storage.root, settings.storage.dataset), settings)
    return {"store": ref.url, "fingerprint": ref.fingerprint}
