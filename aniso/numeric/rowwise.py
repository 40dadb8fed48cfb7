"""Row-deterministic float64 products and per-row noise.

A transform must give each row the same bits whether it arrives alone, in a shard or in any other
block (chunk invariance, bit for bit). Two things break that:

* A BLAS matrix product's rows change in their last bits with the number of rows in the call:
  the library picks its blocking and its split between threads from the shape. Calling it on
  fixed-shape tiles of :data:`TILE` rows (the last one padded with zeros) gives every call the same
  shape. The float64 kernels then treat every row of a tile alike (``tests/test_rowwise.py``
  checks this on the machine it runs on, at the shapes the aligners use). float32 kernels do not
  (measured on OpenBLAS' Haswell kernel), so the row-deterministic products are float64.
* Noise drawn from one generator per call depends on the call's rows. :func:`row_normals` keys
  each row's draw on the row's own bytes instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TILE", "rowwise_matmul", "row_normals"]

#: Rows per BLAS call in :func:`rowwise_matmul`.
TILE = 256

_NOISE_BLOCK = 1024
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def rowwise_matmul(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m`` in float64, each output row a function of its input row only.

    Parameters
    ----------
    x : (n, k) array
    m : (k, p) array (a transposed view is fine)

    Returns
    -------
    (n, p) float64 array.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    n = x.shape[0]
    out = np.empty((n, m.shape[1]), dtype=np.float64)
    full = n - n % TILE
    for start in range(0, full, TILE):
        np.matmul(x[start : start + TILE], m, out=out[start : start + TILE])
    if full < n:
        pad = np.zeros((TILE, x.shape[1]), dtype=np.float64)
        pad[: n - full] = x[full:]
        out[full:] = (pad @ m)[: n - full]
    return out


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 arithmetic wraps, by design)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def row_normals(x: np.ndarray, seed: int) -> np.ndarray:
    """Standard normal noise shaped like ``x``, each row's draw keyed on ``(seed, row bytes)``.

    Equal rows get equal noise; otherwise rows are independent streams. Box–Muller on splitmix64
    counters: vectorised, no per-row generator.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    n, d = x.shape
    half = (d + 1) // 2
    out = np.empty((n, 2 * half), dtype=np.float64)
    columns = np.arange(1, d + 1, dtype=np.uint64) * _GOLDEN
    counters = (np.arange(2 * half, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
    with np.errstate(over="ignore"):
        salt = _mix(np.asarray(seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64) + _GOLDEN)
    for start in range(0, n, _NOISE_BLOCK):  # blocks that stay in cache
        words = x[start : start + _NOISE_BLOCK].view(np.uint64)
        # Each word mixed with its column, summed mod 2**64 (exact, so in any order), mixed again.
        key = _mix(_mix(words + columns).sum(axis=1, dtype=np.uint64) ^ salt)
        bits = _mix(key[:, None] + counters) >> np.uint64(11)  # 53 random bits per draw
        u = (bits + 0.5) * (1.0 / float(1 << 53))  # in (0, 1)
        radius = np.sqrt(-2.0 * np.log(u[:, :half]))
        angle = (2 * np.pi) * u[:, half:]
        out[start : start + _NOISE_BLOCK, :half] = radius * np.cos(angle)
        out[start : start + _NOISE_BLOCK, half:] = radius * np.sin(angle)
    return out[:, :d]
