"""The row-store protocol every stage reads through, and a small typed reference to a store.

Two kinds of stores hold rows: an aniso Zarr store (:class:`aniso.io.store.EmbeddingStore`) and a
``.npy`` / clip-retrieval input read in place (:class:`aniso.io.npy_view.NpyView`). Both satisfy
:class:`RowStore`; :func:`open_rows` opens either from its URL.

A :class:`StoreRef` is what the flows pass around: the URL and the geometry (rows, dimension,
chunk and shard rows) and the content fingerprint, captured once when the input is opened, so
no stage reopens a store just to learn its size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from aniso._fs import exists, join_url, open_url
from aniso.errors import StoreCorrupt

__all__ = ["RowStore", "StoreRef", "open_rows", "describe", "read_blocks"]

@runtime_checkable
class RowStore(Protocol):
    """What the stages read rows through (shards are the write unit, chunks the read unit)."""

    url: str

    @property
    def n_rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def chunk_rows(self) -> int: ...

    @property
    def shard_rows(self) -> int: ...

    @property
    def n_shards(self) -> int: ...

    def shard_range(self, shard: int) -> tuple[int, int]: ...

    def read_rows(self, start: int, stop: int, *, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(embedding, ids, valid)`` of rows ``[start, stop)``."""
        ...

    def read_shard(self, shard: int, *, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def read_valid(self, start: int, stop: int) -> np.ndarray: ...

    def markers(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class StoreRef:
    """A store's URL, geometry and content fingerprint, as the flows hand them to the stages."""

    url: str
    n_rows: int
    dim: int
    chunk_rows: int
    shard_rows: int
    fingerprint: str = ""

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)

    def shard_sizes(self, shards: Sequence[int] | None = None) -> list[int]:
        """Rows of each of ``shards`` (every shard when ``None``)."""
        picked = range(self.n_shards) if shards is None else shards
        return [stop - start for start, stop in (self.shard_range(int(s)) for s in picked)]


def describe(store: RowStore, fingerprint: str = "") -> StoreRef:
    """The :class:`StoreRef` of an opened store."""
    return StoreRef(store.url, store.n_rows, store.dim, store.chunk_rows, store.shard_rows, fingerprint)


def open_rows(url: str, storage_options: dict[str, Any] | None = None) -> RowStore:
    """Open ``url`` for reading: an in-place input's descriptor or an aniso embedding store."""
    from aniso.io.npy_view import VIEW_JSON, NpyView  # pyarrow: only when a store is opened

    options = storage_options or {}
    if exists(join_url(url, VIEW_JSON), options):
        with open_url(join_url(url, VIEW_JSON), "r", options) as f:
            try:
                payload = json.load(f)
            except json.JSONDecodeError as exc:
                raise StoreCorrupt(f"input view {url} is unreadable: {exc}") from exc
        return NpyView.from_json(url, payload, options)
    from aniso.io.store import EmbeddingStore

    return EmbeddingStore.open(url, storage_options=options)


def read_blocks(store: RowStore, start: int, stop: int,
                block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(embedding, ids, valid)`` of rows ``[start, stop)`` in blocks of ``block_rows``, the next
    block read on a second thread while the caller works on this one.

    Blocks are rounded to whole chunks of ``store`` (a block never decodes a chunk twice). Errors
    of a read (:class:`~aniso.errors.StoreCorrupt`, an input's :class:`~aniso.errors.InputError`)
    are raised where the caller takes that block. Close the generator (or exhaust it) to end the
    reader: it finishes the read in flight and starts no other.
    """
    block = max(store.chunk_rows, block_rows - block_rows % store.chunk_rows)
    lows = range(start, stop, block)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aniso-read") as reader:
        pending = reader.submit(store.read_rows, start, min(start + block, stop)) if lows else None
        for lo in lows:
            rows = pending.result()
            following = lo + block
            if following < stop:
                pending = reader.submit(store.read_rows, following, min(following + block, stop))
            yield rows
