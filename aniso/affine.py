"""Fused float32 kernel for the normalised affine maps of the training-free baselines.

ReAlign, the centroid shift, C3 without noise and the identity all map a text row ``x`` as::

    u = x / ‖x‖,   ŷ = (s·u + c) / ‖s·u + c‖,   x* = (ŷ − m) / ‖ŷ − m‖

(``m = μ̂ − μ_image`` when the centroid calibration is on, else no last step). Written out, the
output is ``a·x + b·c − r·m`` with three per-row scalars that depend on the row only through
``‖x‖²``, ``x·c`` and ``x·m``. So instead of the float64 map (a float64 copy of the block and
three normalisations, each with full temporaries), one pass of three row reductions in float32
gives the scalars (combined in float64), and one float32 combination writes the result: several
times less memory traffic, and the same value to float32 rounding (≈ 1e-7; the output is float32).

Every operation is row-wise (``einsum`` reductions and elementwise ufuncs, never a BLAS product
across rows), so a row's result does not depend on which block it was transformed in: transform
stays chunk-invariant bit for bit. A row whose float32 squared norm overflows (finite entries
above ~1e19) is rescaled by its largest entry first, which leaves ``u`` unchanged; NaN/Inf rows
raise :class:`~aniso.errors.InputError`.

The same scalars give the calibration pass's sum of ``ŷ`` (:meth:`NormalizedAffine.premap_sum`)
and the trace statistics (:func:`unit_row_sums`): one matrix–vector product per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .arrays import check_finite

__all__ = ["NormalizedAffine", "unit_row_sums", "BLOCK"]

#: Rows per block. Smaller blocks stay in cache between the reductions and the combination
#: (1,024 rows: fastest alone), but every numpy call re-takes the GIL, and a Dask worker thread
#: sharing the process with Python-busy threads waits up to the switch interval each time
#: (1,024 rows: 7.4 s per 65,536-row shard beside one busy thread, against 0.25 s alone). 2,048
#: rows is the compromise measured here (see flows.produce for the switch interval).
BLOCK = 2048
EPS = 1e-10  # rows with a smaller norm are left unscaled, as aniso.arrays.l2_normalize does


def _float32_rows(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 (a view when it already is)."""
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _norm_terms(block: np.ndarray, *, what: str, row_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """``(block, ‖x‖²)`` for a float32 block; rows whose squared norm overflows are rescaled
    (a copy of the block), NaN/Inf rows raise."""
    nsq = np.einsum("ij,ij->i", block, block).astype(np.float64)
    bad = ~np.isfinite(nsq)
    if bad.any():
        check_finite(block, what=what, row_offset=row_offset)  # raises on NaN/Inf
        block = block.copy()
        rows = np.flatnonzero(bad)
        wide = block[rows].astype(np.float64)
        block[rows] = (wide / np.abs(wide).max(axis=1, keepdims=True)).astype(np.float32)
        nsq[rows] = np.einsum("ij,ij->i", block[rows], block[rows]).astype(np.float64)
    return block, nsq


def _inverse(norm: np.ndarray) -> np.ndarray:
    """``1/norm``, and 1 where ``norm < EPS`` (such rows are not rescaled)."""
    small = norm < EPS
    return 1.0 / np.where(small, 1.0, norm)


@dataclass(frozen=True)
class NormalizedAffine:
    """``x* = normalize(normalize(scale·normalize(x) + shift) − recentre)`` in fused float32.

    Parameters
    ----------
    scale, shift
        ``s`` and ``c`` of the premap ``ŷ = normalize(s·u + c)``.
    recentre
        ``m = μ̂ − μ_image`` of the centroid calibration, or ``None`` when it is off.
    """

    scale: float
    shift: np.ndarray
    recentre: np.ndarray | None = None
    _c: np.ndarray = field(init=False, repr=False)
    _m: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_c", np.asarray(self.shift, dtype=np.float32))
        object.__setattr__(self, "_m", None if self.recentre is None else np.asarray(self.recentre, dtype=np.float32))

    def _premap_terms(self, block: np.ndarray, nsq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: ``inv = 1/‖x‖``, ``t = 1/‖s·u + c‖`` and ``‖s·u + c‖²`` (float64)."""
        s, c = float(self.scale), self._c
        c64 = c.astype(np.float64)
        inv = _inverse(np.sqrt(nsq))
        uc = inv * np.einsum("ij,j->i", block, c).astype(np.float64)
        ysq = s * s * (inv * inv * nsq) + 2.0 * s * uc + float(c64 @ c64)
        t = _inverse(np.sqrt(np.maximum(ysq, 0.0)))
        return inv, t, ysq

    def transform(self, x: np.ndarray, *, what: str = "transform input") -> np.ndarray:
        """The map of every row of ``x`` (float16/32), as a new ``(n, d)`` float32 array."""
        x = np.asarray(x)
        out = np.empty(x.shape, dtype=np.float32)
        tmp = np.empty((min(BLOCK, x.shape[0]), x.shape[1]), dtype=np.float32)
        s = float(self.scale)
        for start in range(0, x.shape[0], BLOCK):
            block, nsq = _norm_terms(_float32_rows(x[start : start + BLOCK]), what=what, row_offset=start)
            inv, t, ysq = self._premap_terms(block, nsq)
            if self._m is None:
                a, b, r = t * s * inv, t, None
            else:
                m64 = self._m.astype(np.float64)
                ym = s * inv * np.einsum("ij,j->i", block, self._m).astype(np.float64) + float(self._c.astype(np.float64) @ m64)
                zsq = t * t * ysq - 2.0 * t * ym + float(m64 @ m64)
                r = _inverse(np.sqrt(np.maximum(zsq, 0.0)))
                a, b = r * t * s * inv, r * t
            rows = block.shape[0]
            target, scratch = out[start : start + rows], tmp[:rows]
            np.multiply(block, a.astype(np.float32)[:, None], out=target)
            np.multiply(self._c, b.astype(np.float32)[:, None], out=scratch)
            target += scratch
            if r is not None:
                np.multiply(self._m, r.astype(np.float32)[:, None], out=scratch)
                target -= scratch
        return out

    def premap_sum(self, x: np.ndarray, *, what: str = "calibration input") -> tuple[np.ndarray, int]:
        """``(Σ ŷ, n)`` over the rows of ``x``: the calibration pass's partial sum (float64)."""
        x = np.asarray(x)
        total = np.zeros(x.shape[1])
        weight = 0.0
        for start in range(0, x.shape[0], BLOCK):
            block, nsq = _norm_terms(_float32_rows(x[start : start + BLOCK]), what=what, row_offset=start)
            inv, t, _ = self._premap_terms(block, nsq)
            # Σ t(s·inv·x + c) = (t·s·inv)ᵀ X + (Σ t)·c
            total += (t * self.scale * inv).astype(np.float32) @ block
            weight += float(t.sum())
        return total + weight * self._c.astype(np.float64), int(x.shape[0])


def unit_row_sums(x: np.ndarray, *, what: str = "input") -> tuple[np.ndarray, float, int]:
    """``(Σ u, Σ ‖u‖², n)`` of the L2-normalised rows ``u`` of ``x`` (float64 sums).

    What the trace statistics need (``mean = Σu/n``, ``tr M2 = Σ‖u‖² − n‖mean‖²``) from one
    float32 reduction and one matrix–vector product per block, without normalising a copy.
    """
    x = np.asarray(x)
    total = np.zeros(x.shape[1])
    squares = 0.0
    for start in range(0, x.shape[0], BLOCK):
        block, nsq = _norm_terms(_float32_rows(x[start : start + BLOCK]), what=what, row_offset=start)
        inv = _inverse(np.sqrt(nsq))
        total += inv.astype(np.float32) @ block
        squares += float((inv * inv * nsq).sum())
    return total, squares, int(x.shape[0])
