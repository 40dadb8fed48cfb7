"""The ingest stage: precomputed embeddings opened in place, or copied into Zarr shard by shard.

Idempotent, one call per shard or per run (see :mod:`aniso.stages`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aniso._fs import redact_url, refuse_url_credentials
from aniso.errors import InputError
from aniso.io.inputs import open_embedding_source
from aniso.io.layout import DatasetLayout
from aniso.io.npy_view import NpyView, create_view
from aniso.io.rows import StoreRef, describe, open_rows
from aniso.io.store import EmbeddingStore
from aniso.numeric.arrays import row_norms

__all__ = ["prepare_input", "import_shard", "needs_id_check", "check_unique_ids"]


def prepare_input(
    url: str, layout: DatasetLayout, *, modality: str, chunk_rows: int, shard_rows: int,
    storage_options: dict[str, Any], attrs: dict[str, Any] | None = None, in_place: bool = True,
    ids: str = "auto",
) -> tuple[StoreRef, list[int]]:
    """Open an input and create (or reopen) what the later stages read it through.

    An input that already is a complete aniso store is used as it is; a ``.npy`` /
    clip-retrieval input is read in place through an :class:`~aniso.io.npy_view.NpyView` at
    ``layout.input_view`` (its rows are validated by the statistics pass, which reads every row
    anyway), or, with ``in_place=False``, copied into a Zarr store at ``layout.input_store``
    shard by shard (:func:`import_shard`). Returns the store's :class:`~aniso.io.rows.StoreRef`
    and the shards still to import.

    Raises
    ------
    InputError
        When ``url`` carries credentials: the view and the store attributes record it.
    """
    refuse_url_credentials(url, f"{modality} input")
    source = open_embedding_source(url, storage_options, what=f"{modality} input {url}", ids=ids)
    if source.store is not None:
        return describe(source.store, source.fingerprint), []
    if in_place:
        # .npy / clip-retrieval rows are read where they are, by byte ranges: no copy into Zarr
        view = create_view(layout.input_view(source.fingerprint, modality), source, chunk_rows=chunk_rows,
                           shard_rows=shard_rows, storage_options=storage_options)
        return describe(view, source.fingerprint), []
    store = EmbeddingStore.create(
        layout.input_store(source.fingerprint, modality), n_rows=source.n_rows, dim=source.dim, chunk_rows=chunk_rows, shard_rows=shard_rows,
        attrs={"source": redact_url(url), "modality": modality, "fingerprint": source.fingerprint, **(attrs or {})},
        storage_options=storage_options,
    )
    pending = sorted(set(range(store.n_shards)) - store.completed_shards())
    return describe(store, source.fingerprint), pending


def import_shard(url: str, store_url: str, shard: int, storage_options: dict[str, Any], ids: str = "auto") -> dict[str, Any]:
    """Copy one shard of rows from an input into its store (validated: finite, right width)."""
    store = EmbeddingStore.open(store_url, storage_options=storage_options, mode="r+")
    if shard in store.completed_shards():
        return store.marker(shard)
    source = open_embedding_source(url, storage_options, ids=ids)
    start, stop = store.shard_range(shard)
    emb, ids = source.read_rows(start, stop)
    norms = row_norms(emb.astype(np.float64))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InputError(f"{url}: row {start + int(zero[0])} is an all-zero embedding")
    return store.write_shard(shard, emb, ids)


def needs_id_check(store_url: str, storage_options: dict[str, Any]) -> bool:
    """Does an in-place input carry its own ids (clip-retrieval metadata) to check for duplicates?"""
    store = open_rows(store_url, storage_options)
    return isinstance(store, NpyView) and any(p.ids_url for p in store.source.parts)


def check_unique_ids(store_url: str, storage_options: dict[str, Any], *, what: str) -> None:
    """Raise InputError naming a duplicated id (ids must identify rows end to end).

    Reads the id column only (never the embeddings).
    """
    store = open_rows(store_url, storage_options)
    seen: dict[str, int] = {}
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        ids = store.ids[start:stop]
        for offset, value in enumerate(ids):
            value = str(value)
            if value in seen:
                raise InputError(f"{what}: id {value!r} appears at rows {seen[value]} and {start + offset}")
            seen[value] = start + offset
