"""``.npy`` and clip-retrieval inputs read in place, by byte ranges, with a store's read interface.

Copying a ``.npy`` input into Zarr before the statistics costs a full read and a full write of
the corpus for nothing: the ``.npy`` layout already gives random access to any row range. An
:class:`NpyView` is a small descriptor (``view.json``: the input's parts, their headers, the
content fingerprint and the shard geometry) that the pipeline opens wherever it opens an
:class:`~aniso.io.store.EmbeddingStore` for reading (:func:`open_rows`). Shards are row ranges
of the input, every row is valid, and rows are validated when read (finite, non-zero; errors
name the file and the row), so the statistics pass that reads every row is also the validation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aniso._fs import filesystem, is_local, join_url, write_atomic
from aniso.errors import InputError, StoreCorrupt
from aniso.io.inputs import EmbeddingSource, NpyPart
from aniso.numeric.arrays import row_norms

__all__ = ["NpyView", "create_view", "VIEW_JSON"]

#: The descriptor file that marks an in-place input.
VIEW_JSON = "view.json"


class _Ids:
    """``ids[start:stop]`` of a view, like a Zarr id array (object array of str)."""

    def __init__(self, view: NpyView) -> None:
        self._view = view

    @property
    def shape(self) -> tuple[int]:
        return (self._view.n_rows,)

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, step = item.indices(self._view.n_rows)
        if step != 1:
            raise IndexError("ids of an input view support contiguous slices only")
        return np.array(self._view.source.read_ids(start, stop), dtype=object)


@dataclass
class NpyView:
    """Row ranges of a ``.npy`` / clip-retrieval input, read in place (see the module docstring)."""

    url: str
    source: EmbeddingSource
    chunk_rows: int
    shard_rows: int
    storage_options: dict[str, Any]

    # -- geometry (the EmbeddingStore read interface) ----------------------------------------
    @property
    def n_rows(self) -> int:
        return self.source.n_rows

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    @property
    def attrs(self) -> dict[str, Any]:
        return {"source": self.source.url, "fingerprint": self.source.fingerprint, "in_place": True}

    @property
    def ids(self) -> _Ids:
        return _Ids(self)

    def shard_range(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.n_shards:
            raise InputError(f"shard {shard} out of range for {self.source.url} ({self.n_shards} shards)")
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)

    def completed_shards(self) -> set[int]:
        return set(range(self.n_shards))

    def is_complete(self) -> bool:
        return True

    def marker(self, shard: int) -> dict[str, Any]:
        start, stop = self.shard_range(shard)
        return {"shard": shard, "start": start, "stop": stop, "rows": stop - start, "valid_rows": stop - start,
                "stats": {}}

    def markers(self) -> list[dict[str, Any]]:
        return [self.marker(s) for s in range(self.n_shards)]

    def count_valid(self) -> int:
        return self.n_rows

    # -- reading -----------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int, *, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(embedding float32, ids, valid)`` for rows ``[start, stop)``, validated.

        Raises
        ------
        InputError
            On a row holding NaN/Inf or an all-zero row (the message names the file and row).
        """
        emb = self.source.read_embedding(start, stop)
        norms = row_norms(emb)  # one pass finds NaN/Inf rows (non-finite norm) and all-zero rows
        odd = ~np.isfinite(norms)
        if odd.any():
            bad = np.flatnonzero(~np.isfinite(emb[odd]).all(axis=1))
            if bad.size:  # (a finite row whose float32 norm overflows is not an error)
                raise self.source.nonfinite_error(start, stop, np.flatnonzero(odd)[bad])
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            url, row = self.source.locate(start + int(zero[0]))
            raise InputError(f"{url}: row {row} is an all-zero embedding")
        ids = np.array(self.source.read_ids(start, stop), dtype=object) if with_ids else np.empty(0, object)
        return emb, ids, np.ones(stop - start, bool)

    def read_shard(self, shard: int, *, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, stop = self.shard_range(shard)
        return self.read_rows(start, stop, with_ids=with_ids)

    def ids_digest(self, shard: int) -> str:
        """:func:`aniso.io.store.ids_digest` of a shard's ids, as a substitutes marker records it
        (the ids are derived from the input, not stored: cheaper than reading an id column)."""
        from aniso.io.store import ids_digest

        return ids_digest(self.source.read_ids(*self.shard_range(shard)))

    def read_valid(self, start: int, stop: int) -> np.ndarray:
        """Every row of an in-place input is valid (a bad row is an error, not a flag)."""
        return np.ones(stop - start, bool)

    def read_rows_at(self, indices: np.ndarray) -> np.ndarray | None:
        """float32 rows at sorted global ``indices``, read one by one through a memory map when
        every part is a local file (a 20,000-row sample of 1M rows touches ~2% of the pages
        instead of reading every shard); ``None`` for remote inputs (read whole ranges there).

        Raises
        ------
        InputError
            On a sampled row holding NaN/Inf or an all-zero row (names the file and row).
        """
        if not all(is_local(filesystem(p.url, self.storage_options)[0]) for p in self.source.parts):
            return None
        out = np.empty((len(indices), self.dim), np.float32)
        for part in self.source.parts:
            lo, hi = np.searchsorted(indices, [part.first_row, part.first_row + part.rows])
            if lo == hi:
                continue
            rows = np.memmap(filesystem(part.url, self.storage_options)[1], dtype=part.dtype, mode="r",
                             offset=part.data_offset, shape=(part.rows, part.dim))
            out[lo:hi] = rows[indices[lo:hi] - part.first_row]
            del rows
        norms = row_norms(out)
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if bad.size:  # validated by the statistics pass already; re-read the row's range to name it
            row = int(indices[bad[0]])
            self.read_rows(row, row + 1, with_ids=False)
        return out

    def iter_shards(self, *, only_valid: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for shard in range(self.n_shards):
            emb, ids, _ = self.read_shard(shard)
            yield shard, emb, ids

    def __iter__(self) -> Iterator[np.ndarray]:
        for shard in range(self.n_shards):
            yield self.read_shard(shard, with_ids=False)[0]

    # -- descriptor ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        parts = [{"url": p.url, "rows": p.rows, "dim": p.dim, "dtype": p.dtype.str, "data_offset": p.data_offset,
                  "first_row": p.first_row, "ids_url": p.ids_url, "id_column": p.id_column} for p in self.source.parts]
        return {"format": "aniso-npy-view/1", "source": self.source.url, "fingerprint": self.source.fingerprint,
                "n_rows": self.n_rows, "dim": self.dim, "chunk_rows": self.chunk_rows, "shard_rows": self.shard_rows,
                "parts": parts}

    @classmethod
    def from_json(cls, url: str, payload: dict[str, Any], storage_options: dict[str, Any]) -> NpyView:
        try:
            parts = [NpyPart(p["url"], int(p["rows"]), int(p["dim"]), np.dtype(p["dtype"]), int(p["data_offset"]),
                             int(p["first_row"]), p.get("ids_url"), p.get("id_column")) for p in payload["parts"]]
            source = EmbeddingSource(payload["source"], "npy", int(payload["n_rows"]), int(payload["dim"]),
                                     storage_options, parts=parts, fingerprint=payload["fingerprint"])
            return cls(url, source, int(payload["chunk_rows"]), int(payload["shard_rows"]), storage_options)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorrupt(f"input view {url} is malformed: {exc}") from exc


def create_view(url: str, source: EmbeddingSource, *, chunk_rows: int, shard_rows: int,
                storage_options: dict[str, Any]) -> NpyView:
    """Write the descriptor of ``source`` at ``url`` (idempotent: same input, same descriptor).

    The geometry is the one :meth:`aniso.io.store.EmbeddingStore.create` gives a store of the same
    rows, so the substitutes store (created with the view's geometry) is shard-aligned with it.
    """
    chunk_rows = min(chunk_rows, shard_rows)
    n = source.n_rows
    shard_rows = min(shard_rows, max(chunk_rows, n + (-n) % chunk_rows))
    view = NpyView(url, source, chunk_rows, shard_rows, storage_options)
    # whole or not at all: a reader (or a concurrent run) never sees half a descriptor
    write_atomic(join_url(url, VIEW_JSON), json.dumps(view.to_json(), indent=1, sort_keys=True), storage_options)
    return view
