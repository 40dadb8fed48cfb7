"""Fused float32 kernel for the normalised affine maps of the training-free baselines and of
AnisoAlign's closed form.

ReAlign, the centroid shift, C3 without noise, the identity and AnisoAlign's closed form all map
a text row ``x`` as::

    u = x / ‖x‖,   ŷ = (L u + c) / ‖L u + c‖,   x* = (ŷ − m) / ‖ŷ − m‖

with ``L`` a scalar ``s`` (the baselines) or a ``d × d`` matrix ``A`` (the closed form), and
``m = μ̂ − μ_image`` when the centroid calibration is on (else no last step). With ``r = L x``
(``s·x``, or one float32 matrix product), the output is ``a·r + b·c − g·m`` with per-row scalars
that depend on the row only through ``‖x‖²``, ``‖r‖²``, ``r·c`` and ``r·m``. So instead of the
float64 map (a float64 copy of the block and three normalisations, each with full temporaries),
float32 row reductions give the scalars (combined in float64), and one float32 combination
writes the result: several times less memory traffic, and the same value to float32 rounding
(≈ 1e-7 for the baselines, ≈ 1e-6 with a matrix; the output is float32).

Every operation is row-wise (``einsum`` reductions, elementwise ufuncs, and a matrix's product
through :func:`~aniso.numeric.rowwise.rowwise_matmul` on fixed float32 tiles), so a row's result
does not depend on which block it was transformed in: transform stays chunk-invariant bit for bit
(``tests/test_affine.py``, ``tests/test_aligner_contract.py``). With a matrix, the bits are those
of the machine's float32 BLAS kernel, which is why a model records the kernel it applies with
(:attr:`aniso.methods.Aligner.apply_kernel`). A row whose float32 squared norm overflows (finite
entries above ~1e19) is rescaled by its largest entry first, which leaves ``u`` unchanged; NaN/Inf
rows raise :class:`~aniso.errors.InputError`.

The same scalars give the calibration pass's sum of ``ŷ`` (:meth:`NormalizedAffine.premap_sum`)
and the trace statistics (:func:`unit_row_sums`): one matrix–vector product per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aniso.numeric.arrays import check_finite
from aniso.numeric.rowwise import rowwise_matmul

__all__ = ["NormalizedAffine", "unit_row_sums", "BLOCK", "APPLY_KERNEL", "APPLY_KERNELS"]

#: The ways an aligner's transform can compute a premap that is a matrix map (AnisoAlign's closed
#: form; the moment match always takes the float64 map), each row-deterministic (a row's bits do
#: not depend on its block):
#: ``float32-tiles``, this kernel with its products on fixed float32 tiles (about twice as fast;
#: the bits are those of the machine's float32 BLAS kernel, which OpenBLAS picks per CPU family),
#: and ``float64-rows``, the float64 map (:func:`aniso.numeric.rowwise.centred_affine_rows`)
#: rounded to float32 at the end, which the models saved before the choice was recorded keep.
#: Scalar maps always use this kernel.
APPLY_KERNELS = ("float32-tiles", "float64-rows")
#: The kernel of a newly fitted model.
APPLY_KERNEL = "float32-tiles"

#: Rows per block. Smaller blocks stay in cache between the reductions and the combination
#: (1,024 rows: fastest alone), but every numpy call re-takes the GIL, and a Dask worker thread
#: sharing the process with Python-busy threads waits up to the switch interval each time
#: (1,024 rows: 7.4 s per 65,536-row shard beside one busy thread, against 0.25 s alone). 2,048
#: rows is the compromise measured here (see flows.produce for the switch interval).
BLOCK = 2048
EPS = 1e-10  # rows with a smaller norm are left unscaled, as aniso.numeric.arrays.l2_normalize does


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
    """``x* = normalize(normalize(L·normalize(x) + shift) − recentre)`` in fused float32.

    Parameters
    ----------
    scale
        ``L``: a scalar ``s``, or a ``(d, d)`` matrix ``A`` (applied as ``A u``).
    shift
        ``c`` of the premap ``ŷ = normalize(L u + c)``.
    recentre
        ``m = μ̂ − μ_image`` of the centroid calibration, or ``None`` when it is off.
    """

    scale: float | np.ndarray
    shift: np.ndarray
    recentre: np.ndarray | None = None
    _c: np.ndarray = field(init=False, repr=False)
    _m: np.ndarray | None = field(init=False, repr=False)
    _matrix: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        matrix = np.ndim(self.scale) == 2
        object.__setattr__(self, "_matrix", np.ascontiguousarray(np.asarray(self.scale, np.float32).T) if matrix else None)
        object.__setattr__(self, "_c", np.asarray(self.shift, dtype=np.float32))
        object.__setattr__(self, "_m", None if self.recentre is None else np.asarray(self.recentre, dtype=np.float32))

    def _premap_terms(self, block: np.ndarray, nsq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """Per row: ``r = L x`` (float32), ``inv = 1/‖x‖``, ``t = 1/‖L u + c‖``, ``‖L u + c‖²``;
        and the scalar ``s`` that multiplies ``inv·r`` (1 with a matrix)."""
        c = self._c
        c64 = c.astype(np.float64)
        if self._matrix is None:
            rows, s, rsq = block, float(self.scale), nsq
        else:
            rows, s = rowwise_matmul(block, self._matrix, dtype=np.float32), 1.0
            rsq = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
        inv = _inverse(np.sqrt(nsq))
        uc = inv * np.einsum("ij,j->i", rows, c).astype(np.float64)
        ysq = s * s * (inv * inv * rsq) + 2.0 * s * uc + float(c64 @ c64)
        t = _inverse(np.sqrt(np.maximum(ysq, 0.0)))
        return rows, inv, t, ysq, s

    def transform(self, x: np.ndarray, *, what: str = "transform input", out: np.ndarray | None = None) -> np.ndarray:
        """The map of every row of ``x`` (float16/32), into ``out`` (``(n, d)`` float32) or a new array."""
        x = np.asarray(x)
        if out is None:
            out = np.empty(x.shape, dtype=np.float32)
        tmp = np.empty((min(BLOCK, x.shape[0]), x.shape[1]), dtype=np.float32)
        for start in range(0, x.shape[0], BLOCK):
            block, nsq = _norm_terms(_float32_rows(x[start : start + BLOCK]), what=what, row_offset=start)
            rows, inv, t, ysq, s = self._premap_terms(block, nsq)
            if self._m is None:
                a, b, g = t * s * inv, t, None
            else:
                m64 = self._m.astype(np.float64)
                ym = s * inv * np.einsum("ij,j->i", rows, self._m).astype(np.float64) + float(self._c.astype(np.float64) @ m64)
                zsq = t * t * ysq - 2.0 * t * ym + float(m64 @ m64)
                g = _inverse(np.sqrt(np.maximum(zsq, 0.0)))
                a, b = g * t * s * inv, g * t
            n = block.shape[0]
            target, scratch = out[start : start + n], tmp[:n]
            np.multiply(rows, a.astype(np.float32)[:, None], out=target)
            np.multiply(self._c, b.astype(np.float32)[:, None], out=scratch)
            target += scratch
            if g is not None:
                np.multiply(self._m, g.astype(np.float32)[:, None], out=scratch)
                target -= scratch
        return out

    def premap_sum(self, x: np.ndarray, *, what: str = "calibration input") -> tuple[np.ndarray, int]:
        """``(Σ ŷ, n)`` over the rows of ``x``: the calibration pass's partial sum (float64)."""
        x = np.asarray(x)
        total = np.zeros(x.shape[1])
        weight = 0.0
        for start in range(0, x.shape[0], BLOCK):
            block, nsq = _norm_terms(_float32_rows(x[start : start + BLOCK]), what=what, row_offset=start)
            rows, inv, t, _, s = self._premap_terms(block, nsq)
            # Σ t(s·inv·r + c) = (t·s·inv)ᵀ R + (Σ t)·c
            total += (t * s * inv).astype(np.float32) @ rows
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
