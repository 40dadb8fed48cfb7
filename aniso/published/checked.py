"""Checked reads of a published version: every chunk read is compared with its manifest digest.

A missing shard file reads back from Zarr as fill values, a swapped one as another shard's rows,
and a version removed under a reader as fill values too, all without a codec error. aniso's
readers (``PublishedDataset.embedding``/``ids``/``valid`` slices, :func:`iter_batches
<aniso.published.loader.iter_batches>`, the torch loader) therefore read whole chunks and check
each against the per-chunk crc32c the manifest records (:mod:`aniso.io.chunk_digest`); a chunk
that does not match raises :class:`~aniso.errors.StoreCorrupt` naming the version, the array and
the chunk's rows, or :class:`~aniso.errors.StoreNotFound` when the version itself is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from aniso.errors import StoreCorrupt, StoreNotFound
from aniso.io.chunk_digest import CHUNK_ARRAYS, chunk_digest, row_stride

__all__ = ["ChunkDigests", "CheckedArray", "read_chunk"]


class ChunkDigests:
    """The manifest's per-chunk digests of one version, by array and global chunk index.

    The embedding digests cover every 16th row (:mod:`aniso.io.chunk_digest`): they identify the
    chunk read, while zarr's codec crc32c (checked on the same read) covers every byte in it.

    Parameters
    ----------
    manifest
        A manifest whose shard entries carry ``chunks`` (format ``aniso-substitutes/3``).
    where
        How messages name the version (``"version V of dataset D (URL)"``).
    gone
        Whether the version has been removed since it was opened (then a mismatch is reported
        as :class:`StoreNotFound`: the data are not damaged, they are gone).
    """

    def __init__(self, manifest: dict[str, Any], where: str, gone: Callable[[], bool]) -> None:
        self.where, self.gone = where, gone
        self.chunk_rows = int(manifest["chunk_rows"])
        self.embedding_row_stride = int(manifest["chunk_checksum"]["embedding_row_stride"])
        self.n_rows = int(manifest["n_rows"])
        self.digests = {name: [d for shard in manifest["shards"] for d in shard["chunks"][name]]
                        for name in CHUNK_ARRAYS}

    @staticmethod
    def present(manifest: dict[str, Any]) -> bool:
        """Whether every shard entry records its chunk digests (not in ``aniso-substitutes/2``)."""
        return all(isinstance(s, dict) and isinstance(s.get("chunks"), dict) for s in manifest["shards"])

    def rows(self, chunk: int) -> tuple[int, int]:
        lo = chunk * self.chunk_rows
        return lo, min(lo + self.chunk_rows, self.n_rows)

    def fail(self, name: str, chunk: int, why: str) -> StoreCorrupt | StoreNotFound:
        """The error for chunk ``chunk`` of ``name``: StoreNotFound when the version was removed."""
        lo, hi = self.rows(chunk)
        if self.gone():
            return StoreNotFound(f"{self.where} was removed while being read (array {name!r}, chunk {chunk}, "
                                 f"rows [{lo}, {hi})); open a version that exists (aniso gc removed it?)")
        return StoreCorrupt(f"{self.where}: array {name!r} chunk {chunk} (rows [{lo}, {hi})) {why}; "
                            "run `aniso verify` for every damaged shard")

    def check(self, name: str, chunk: int, values: np.ndarray) -> None:
        """Raise unless ``values`` (the rows of chunk ``chunk`` of ``name``) match the manifest."""
        if chunk_digest(values, row_stride(name, self.embedding_row_stride)) != self.digests[name][chunk]:
            raise self.fail(name, chunk, "does not match its published digest (shard file missing, "
                                         "truncated or swapped)")


def read_chunk(array: Any, name: str, chunk: int, digests: ChunkDigests | None, n_chunks: int = 1) -> np.ndarray:
    """Chunks ``[chunk, chunk + n_chunks)`` of ``array`` (one zarr call), each checked when
    ``digests`` is given; a chunk zarr cannot decode is StoreCorrupt naming it too."""
    rows = int(array.chunks[0])
    lo, hi = chunk * rows, min((chunk + n_chunks) * rows, int(array.shape[0]))
    try:
        block = array[lo:hi]
    except (ValueError, RuntimeError, KeyError) as exc:  # codec checksum, truncated shard index
        if n_chunks > 1:  # name the chunk that fails, not the first of the run
            return np.concatenate([read_chunk(array, name, chunk + i, digests) for i in range(n_chunks)])
        if digests is None:
            raise StoreCorrupt(f"{array.name or name}: rows [{lo}, {hi}) are unreadable: {exc}") from exc
        raise digests.fail(name, chunk, f"is unreadable ({exc})") from exc
    if digests is not None:
        for i in range(n_chunks):
            digests.check(name, chunk + i, block[i * rows : (i + 1) * rows])
    return block


class CheckedArray:
    """A read-only view of one published array whose every read is checked chunk by chunk.

    Indexing takes the same row keys as a zarr array (an int, a slice, a sequence of rows,
    optionally followed by the other axes' keys); the chunks the rows touch are read whole (the
    read unit anyway), checked, then indexed.
    """

    def __init__(self, array: Any, name: str, digests: ChunkDigests | None) -> None:
        self.array, self.name, self.digests = array, name, digests

    shape = property(lambda self: tuple(self.array.shape))
    dtype = property(lambda self: self.array.dtype)
    chunks = property(lambda self: tuple(self.array.chunks))
    ndim = property(lambda self: self.array.ndim)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> Any:
        if self.digests is None:
            return self.array[key]
        row_key, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        n, step = len(self), int(self.array.chunks[0])
        rows = np.arange(n)[row_key]
        if rows.size == 0:
            return self.array[key]
        touched = np.unique(np.atleast_1d(rows) // step)
        # contiguous runs of touched chunks are each one zarr call (concurrent fetches on S3)
        breaks = np.flatnonzero(np.diff(touched) != 1) + 1
        blocks = [read_chunk(self.array, self.name, int(run[0]), self.digests, len(run))
                  for run in np.split(touched, breaks)]
        block = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        starts = np.concatenate([np.arange(run[0] * step, min((run[-1] + 1) * step, n))
                                 for run in np.split(touched, breaks)])
        # position of each wanted row within the concatenated block
        local = np.searchsorted(starts, rows)
        return block[(local, *rest)]
