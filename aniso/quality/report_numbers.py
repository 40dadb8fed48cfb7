"""The report's sample statistics: covariance spectra, the residual spectrum, per-direction
spread ratios, and the centroid-shift baseline the report's reference column is computed on.

Everything works from the gate samples only (never whole arrays), through thin factors instead of
d × d covariances where it can, so the cost is bounded by the sample sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TOP_EIGEN", "TOP_DIRECTIONS", "spectrum", "residual_spectrum", "direction_ratios", "centroid_baseline",
           "reference_stand_ins", "sample_content"]


#: How many leading eigenvalues the plots and report.json keep.
TOP_EIGEN = 128
#: Principal directions of the text sample shown in the per-direction plot.
TOP_DIRECTIONS = 32


def _factor(x: np.ndarray) -> np.ndarray:
    """``F`` (n × d) with ``Σ = FᵀF``: the centred, L2-normalised rows over ``sqrt(n)``.

    The spectra are computed from ``F`` through whichever of ``FFᵀ`` (n × n) and ``FᵀF`` (d × d)
    is smaller, so the report's cost is bounded by the sample size, not by d.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    return (x - x.mean(axis=0)) / np.sqrt(x.shape[0])


def _cov(x: np.ndarray) -> np.ndarray:
    f = _factor(x)
    return f.T @ f


def _usable(x: np.ndarray | None) -> bool:
    return x is not None and x.ndim == 2 and x.shape[0] >= 2 and bool(np.isfinite(x).all())


def spectrum(x: np.ndarray | None, top: int = TOP_EIGEN, *, cov: np.ndarray | None = None,
             factor: np.ndarray | None = None) -> list[float]:
    """Trace-normalised covariance eigenvalues (descending) of the L2-normalised rows of ``x``."""
    if cov is None and factor is None:
        if not _usable(x):
            return []
        factor = _factor(x)
    if cov is None:
        assert factor is not None
        gram = factor @ factor.T if factor.shape[0] < factor.shape[1] else factor.T @ factor
        w = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
    else:
        w = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    total = float(w.sum())
    return [] if total <= 0 else (w[:top] / total).tolist()


def residual_spectrum(
    a: np.ndarray | None, b: np.ndarray | None, top: int = TOP_EIGEN, *,
    cov_a: np.ndarray | None = None, cov_b: np.ndarray | None = None,
    factor_a: np.ndarray | None = None, factor_b: np.ndarray | None = None,
) -> list[float]:
    """Sorted ``|eig(Σ_b − Σ_a)|`` (descending): the second-order gap between two sets.

    From factors (``Σ = FᵀF``) with ``m = n_a + n_b < d``: ``Σ_b − Σ_a = Zᵀ S Z`` with
    ``Z = [F_b; F_a]`` and ``S = diag(+1, −1)``. With ``ZZᵀ = VΛVᵀ`` (so ``Zᵀ = UΛ^½Vᵀ``), its
    non-zero eigenvalues are those of the m × m matrix ``Λ^½ VᵀSV Λ^½``: one Gram product and two
    m × m eigen-decompositions (cost O(d m² + m³), not O(d³)).
    """
    if cov_a is None and cov_b is None and (factor_a is not None or _usable(a)) and (factor_b is not None or _usable(b)):
        fa = factor_a if factor_a is not None else _factor(a)
        fb = factor_b if factor_b is not None else _factor(b)
        m, d = fa.shape[0] + fb.shape[0], fa.shape[1]
        if m < d:
            z = np.concatenate([fb, fa])
            lam, v = np.linalg.eigh(z @ z.T)
            root = np.sqrt(np.clip(lam, 0.0, None))
            signs = np.r_[np.ones(fb.shape[0]), -np.ones(fa.shape[0])]
            inner = (v.T * signs) @ v
            w = np.sort(np.abs(np.linalg.eigvalsh(root[:, None] * inner * root[None, :])))[::-1]
            return w[:top].tolist()
        cov_a, cov_b = fa.T @ fa, fb.T @ fb
    if cov_a is None:
        cov_a = _cov(a) if _usable(a) else None
    if cov_b is None:
        cov_b = _cov(b) if _usable(b) else None
    if cov_a is None or cov_b is None:
        return []
    w = np.sort(np.abs(np.linalg.eigvalsh(cov_b - cov_a)))[::-1]
    return w[:top].tolist()


def direction_ratios(text: np.ndarray | None, subs: np.ndarray | None, image: np.ndarray | None,
                     top: int = TOP_DIRECTIONS) -> dict[str, list[float]]:
    """Along the top principal directions ``u_k`` of the (normalised) text sample: ``std(S·u_k) /
    std(X·u_k)`` and ``std(T·u_k) / std(X·u_k)`` — the spread a method applied per direction, and
    the spread the images have there."""
    if not _usable(text):
        return {}
    f = _factor(text)
    k = min(top, min(f.shape) - 1)
    if k < 1:
        return {}
    # top right singular vectors of the text factor (cost bounded by the sample size)
    _, sv, vt = np.linalg.svd(f, full_matrices=False)
    u = vt[:k].T
    base = sv[:k]
    out: dict[str, list[float]] = {}
    for name, x in (("substitutes", subs), ("image", image)):
        if _usable(x) and x.shape[1] == text.shape[1]:
            proj = _factor(x) @ u
            out[name] = (np.linalg.norm(proj, axis=0) / np.where(base > 0, base, 1.0)).tolist()
    return out


def centroid_baseline(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The simplest fitted baseline on samples: shift the text by ``mean(T) − mean(X)`` and
    renormalise (what the ``centroid`` method does), to judge a method's metrics against."""
    from aniso.numeric.arrays import l2_normalize

    x, t = l2_normalize(text), l2_normalize(image)
    return l2_normalize(x - x.mean(axis=0) + t.mean(axis=0))


def reference_stand_ins(text: np.ndarray | None, image: np.ndarray | None) -> dict[str, np.ndarray]:
    """The stand-ins for the substitutes that the report's reference columns are computed on:
    the raw text, and (with an image sample) the centroid baseline."""
    if not _usable(text):
        return {}
    refs = {"raw text": np.asarray(text, np.float64)}
    if _usable(image):
        refs["baseline (centroid shift)"] = centroid_baseline(text, image)
    return refs


def sample_content(text: np.ndarray | None, subs: np.ndarray | None, image: np.ndarray | None) -> dict[str, Any]:
    """The report's sample-based parts: ``spectra``, ``residual_spectrum`` and ``directions``.

    They need only the samples, so the gate stage computes them while the substitutes are still
    being written (:func:`aniso.stages.gate.prepare_gate_sample`).
    """
    # factors, not d × d covariances: the cost is bounded by the sample sizes (d may be 8192)
    fac = {name: _factor(x) if _usable(x) else None for name, x in (("text", text), ("image", image), ("substitutes", subs))}
    return {
        "spectra": {name: [] if f is None else spectrum(None, factor=f) for name, f in fac.items()},
        "residual_spectrum": {
            "before": [] if fac["text"] is None or fac["image"] is None else
            residual_spectrum(None, None, factor_a=fac["text"], factor_b=fac["image"]),
            "after": [] if fac["substitutes"] is None or fac["image"] is None else
            residual_spectrum(None, None, factor_a=fac["substitutes"], factor_b=fac["image"]),
        },
        "directions": direction_ratios(text, subs, image),
    }
