"""Per-chunk digests: one crc32c per chunk of each array, recorded when a shard is written.

A chunk's own crc32c codec (:mod:`aniso.io.store`) proves the chunk is self-consistent, not that
it is the chunk that belongs there: a missing shard file reads back as fill values and a swapped
one as another shard's rows, both with valid codec checksums. The digests recorded here in the
shard's completion marker (and from there in the published manifest) name the content each
chunk must have, so a reader can check every chunk it reads for the cost of one crc32c pass.

Recipe (``docs/format.md``, "Checksums"), for rows ``[lo, hi)`` of one chunk:

* ``embedding``: crc32c of every ``EMBEDDING_ROW_STRIDE``-th row (``emb[lo:hi:16]``), its bytes
  in C order, stored dtype, little-endian;
* ``id``: crc32c of all the ids joined by U+001F, UTF-8;
* ``valid``: crc32c of all the flags, one byte (0 or 1) per row.

Why every 16th embedding row: these digests establish *which* chunk was read (a deleted, swapped
or vanished shard differs in every row, and its ids in every id); damage *inside* a chunk is
the codec's crc32c's job, checked by zarr on every read, and ``aniso verify`` checks every byte
against the per-shard sha256. Hashing every embedding row again cost readers ~10% of their
throughput; every 16th costs well under 1% (``bench/loader.py --check``).
"""

from __future__ import annotations

from collections.abc import Sequence

import google_crc32c
import numpy as np

__all__ = ["CHUNK_ARRAYS", "EMBEDDING_ROW_STRIDE", "chunk_digest", "chunk_digests", "row_stride"]

#: The arrays of an embedding store that carry per-chunk digests, in manifest order.
CHUNK_ARRAYS = ("embedding", "id", "valid")
#: The embedding digest covers rows ``lo, lo + 16, ...`` of each chunk (recorded in the manifest).
EMBEDDING_ROW_STRIDE = 16


def chunk_digest(values: np.ndarray | Sequence[str], row_stride: int = 1) -> int:
    """crc32c of one chunk of one array, over every ``row_stride``-th row (see the module recipe)."""
    arr = np.asarray(values)[::row_stride]
    if arr.dtype == object or arr.dtype.kind in "UST":
        data: bytes | np.ndarray = "\x1f".join(map(str, arr.tolist())).encode()
    else:
        # no copy for native little-endian data; google_crc32c reads a uint8 array's buffer as is
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        data = little.reshape(-1).view(np.uint8)
    return int(google_crc32c.value(data))


def chunk_digests(embedding: np.ndarray, ids: Sequence[str], valid: np.ndarray, chunk_rows: int,
                  embedding_row_stride: int = EMBEDDING_ROW_STRIDE) -> dict[str, list[int]]:
    """``{array: [digest of each chunk]}`` of one shard's rows (shards start on a chunk boundary)."""
    ids_arr = np.asarray(list(ids), dtype=object)
    arrays = {"embedding": embedding, "id": ids_arr, "valid": np.asarray(valid, dtype=bool)}
    return {name: [chunk_digest(arr[lo : lo + chunk_rows], row_stride(name, embedding_row_stride))
                   for lo in range(0, len(arr), chunk_rows)]
            for name, arr in arrays.items()}


def row_stride(name: str, embedding_row_stride: int = EMBEDDING_ROW_STRIDE) -> int:
    """The row stride of ``name``'s digests: every row, but every ``embedding_row_stride``-th of ``embedding``."""
    return embedding_row_stride if name == "embedding" else 1
