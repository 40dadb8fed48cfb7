"""Deterministic row sampling that does not depend on how the rows are chunked.

The sample is a set of *global row indices* drawn from a seeded generator once the row count is
known (after the statistics pass); each shard then keeps the rows whose indices fall in its
range. The union over shards equals the in-memory sample exactly, whatever the shard layout.
"""

from __future__ import annotations

import numpy as np

from aniso.numeric.arrays import ArrayLike2D, iter_chunks

__all__ = ["sample_indices", "rows_in_range", "collect_rows"]


def sample_indices(n_total: int, size: int, seed: int) -> np.ndarray:
    """Sorted global indices of ``min(size, n_total)`` rows drawn without replacement."""
    if size >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=size, replace=False)).astype(np.int64)


def rows_in_range(indices: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The indices in ``[start, stop)``, shifted to be relative to ``start``."""
    lo, hi = np.searchsorted(indices, [start, stop])
    return indices[lo:hi] - start


def collect_rows(source: ArrayLike2D, indices: np.ndarray, *, what: str = "input") -> np.ndarray:
    """Gather the rows at sorted global ``indices`` from a chunk source in one pass."""
    parts = []
    offset = 0
    for chunk in iter_chunks(source, what=what):
        local = rows_in_range(indices, offset, offset + chunk.shape[0])
        if local.size:
            parts.append(np.asarray(chunk[local]))
        offset += chunk.shape[0]
    return np.concatenate(parts, axis=0) if parts else np.empty((0, 0))
