"""Row-deterministic float64 products and per-row noise.

A transform must give each row the same bits whether it arrives alone, in a shard or in any other
block (chunk invariance, bit for bit). Two things break that:

* A BLAS matrix product's rows change in their last bits with the number of rows in the call:
  the library picks its blocking and its split between threads from the shape. Calling it on
  fixed-shape tiles of :data:`TILE` rows (the last one padded with zeros) gives every call the same
  shape, and the kernels then treat every row of a tile alike, in float64 and in float32
  (``tests/test_rowwise.py`` checks both on the machine it runs on, at the shapes the aligners
  use). The bits are those of the machine's kernel: OpenBLAS picks one per CPU family, so two
  CPU families can differ in a row's last bit (float64 products rounded to float32 output almost
  never do, which is why models fitted before the float32 kernel keep it:
  :attr:`aniso.methods.Aligner.apply_kernel`).
* Noise drawn from one generator per call depends on the call's rows. :func:`row_normals` keys
  each row's draw on the row's own bytes instead.

:func:`centred_affine_rows` is the float64 map of the matrix methods' apply (AnisoAlign's closed
form, the moment match) written for speed: the same operations on the same values as composing
:func:`~aniso.numeric.arrays.l2_normalize` and :func:`rowwise_matmul`, so the same bits, but in
blocks of :data:`BLOCK` rows through buffers allocated once per call. Whole-chunk float64
temporaries (32 MiB and more for 8,192 rows at d=512) are above glibc's largest ``mmap``
threshold: every one was mapped, page-faulted in and unmapped again, which cost as much system
time as the arithmetic (``bench/apply.py``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TILE", "BLOCK", "rowwise_matmul", "centred_affine_rows", "row_normals"]

#: Rows per BLAS call in :func:`rowwise_matmul`.
TILE = 256
#: Rows per block of :func:`centred_affine_rows` (a multiple of :data:`TILE`; 4 MiB of float64 at d=512).
BLOCK = 1024

_NOISE_BLOCK = 1024
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def rowwise_matmul(x: np.ndarray, m: np.ndarray, out: np.ndarray | None = None,
                   dtype: type[np.floating] = np.float64) -> np.ndarray:
    """``x @ m``, each output row a function of its input row only.

    Parameters
    ----------
    x : (n, k) array
    m : (k, p) array (a transposed view is fine)
    out : (n, p) array of ``dtype``, optional
        Where to write the product (not overlapping ``x``); a new array when None.
    dtype : float64 (the default) or float32
        The precision of the product; ``x`` and ``m`` are cast to it.

    Returns
    -------
    (n, p) array of ``dtype``: ``out`` when given.
    """
    x = np.asarray(x, dtype=dtype)
    m = np.asarray(m, dtype=dtype)
    n = x.shape[0]
    if out is None:
        out = np.empty((n, m.shape[1]), dtype=dtype)
    full = n - n % TILE
    for start in range(0, full, TILE):
        np.matmul(x[start : start + TILE], m, out=out[start : start + TILE])
    if full < n:
        pad = np.zeros((TILE, x.shape[1]), dtype=dtype)
        pad[: n - full] = x[full:]
        out[full:] = (pad @ m)[: n - full]
    return out


def _normalize_rows(work: np.ndarray, eps: float = 1e-10) -> None:
    """:func:`~aniso.numeric.arrays.l2_normalize`'s arithmetic, in place on a float64 block."""
    norm = np.sqrt(np.einsum("ij,ij->i", work, work))
    norm[norm < eps] = 1.0
    work /= norm[:, None]


def centred_affine_rows(x: np.ndarray, m: np.ndarray, mu_text: np.ndarray, mu_image: np.ndarray,
                        calibration: tuple[np.ndarray, np.ndarray] | None = None,
                        out: np.ndarray | None = None) -> np.ndarray:
    """``x̂ = normalize(μ_i + (normalize(x) − μ_t) m)``, then, with ``calibration = (μ̂, μ)``,
    ``normalize(x̂ − μ̂ + μ)``; float32 rows, each a function of its input row only.

    Bit for bit what ``l2_normalize(μ_i + rowwise_matmul(l2_normalize(x) − μ_t, m))`` (and the
    calibration's ``l2_normalize(x̂ − μ̂ + μ_i)``) give, cast to float32: the same float64
    operations in the same order, row by row, in blocks of :data:`BLOCK` rows with reused
    buffers.

    Parameters
    ----------
    x : (n, d) array of any float dtype (finite: the caller checks)
    m : (d, p) array, e.g. ``A.T`` (a view is fine)
    mu_text : (d,) float64
    mu_image : (p,) float64
    calibration : pair of (p,) float64, optional
        The calibration mean μ̂ and the centroid μ it is moved to; None: no calibration step.
    out : (n, p) float32 array, optional
        Where to write the rows; a new array when None.

    Returns
    -------
    (n, p) float32 array: ``out`` when given.
    """
    m = np.asarray(m, dtype=np.float64)
    n, d = x.shape
    if out is None:
        out = np.empty((n, m.shape[1]), dtype=np.float32)
    work = np.empty((min(BLOCK, n), d), dtype=np.float64)
    prod = np.empty((min(BLOCK, n), m.shape[1]), dtype=np.float64)
    for start in range(0, n, BLOCK):
        rows = x[start : start + BLOCK]
        b = rows.shape[0]
        u, y = work[:b], prod[:b]
        u[...] = rows  # l2_normalize's float64 copy
        _normalize_rows(u)
        u -= mu_text
        rowwise_matmul(u, m, out=y)
        y += mu_image  # μ_i + y: IEEE addition commutes bit for bit
        _normalize_rows(y)
        if calibration is not None:
            y -= calibration[0]
            y += calibration[1]
            _normalize_rows(y)
        out[start : start + b] = y
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
