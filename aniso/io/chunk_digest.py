"""Per-chunk digests: one crc32c per chunk of each array, recorded when a shard is written.

A chunk's own crc32c codec (:mod:`aniso.io.store`) proves the chunk is self-consistent, not that
it is the chunk that belongs there: a missing shard file reads back as fill values and a swapped
one as another shard's rows, both with valid codec checksums. The digests recorded here in the
shard's completion marker (and from there in the published manifest) name the content each
chunk must have, so a reader can check every chunk it reads for the cost of one crc32c pass.

Recipe (``docs/format.md``, "Checksums"), for rows ``[lo, hi)`` of one chunk:

* ``embedding``: crc32c of the rows' bytes, C order, stored dtype, little-endian;
* ``id``: crc32c of the ids joined by U+001F, UTF-8;
* ``valid``: crc32c of the flags, one byte (0 or 1) per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import google_crc32c
import numpy as np

__all__ = ["CHUNK_ARRAYS", "chunk_digest", "chunk_digests"]

#: The arrays of an embedding store that carry per-chunk digests, in manifest order.
CHUNK_ARRAYS = ("embedding", "id", "valid")


def chunk_digest(values: np.ndarray | Sequence[str]) -> int:
    """crc32c of one chunk of one array (see the module recipe)."""
    arr = np.asarray(values)
    if arr.dtype == object or arr.dtype.kind in "UST":
        data: bytes | np.ndarray = "\x1f".join(map(str, arr.tolist())).encode()
    else:
        # no copy for native little-endian data; google_crc32c reads a uint8 array's buffer as is
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        data = little.reshape(-1).view(np.uint8)
    return int(google_crc32c.value(data))


def chunk_digests(embedding: np.ndarray, ids: Sequence[str], valid: np.ndarray, chunk_rows: int) -> dict[str, list[int]]:
    """``{array: [digest of each chunk]}`` of one shard's rows (shards start on a chunk boundary)."""
    ids_arr = np.asarray(list(ids), dtype=object)
    arrays = {"embedding": embedding, "id": ids_arr, "valid": np.asarray(valid, dtype=bool)}
    return {name: [chunk_digest(arr[lo : lo + chunk_rows]) for lo in range(0, len(arr), chunk_rows)]
            for name, arr in arrays.items()}
