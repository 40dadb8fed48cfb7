"""Stage II's global initialisation: a shrunk, bounded, evidence-adaptive second-moment map.

    y = μ_i + A (x − μ_t),   A = Σ̃_t V diag(s·e^{h}) Vᵀ,   Vᵀ Σ̃_t V = I,  Vᵀ Σ̃_i V = diag(w)

``V`` solves the generalised eigenproblem of the (shrunk) image and text covariances, so ``w_j``
is the image/text variance ratio along direction ``j``; ``s`` is ReAlign's global trace ratio and
``g_j = ½ log w_j − log s`` is how far direction ``j`` is from ReAlign's isotropic answer. The
applied log-scale ``h_j`` is

    h_j = sign(g_j) · ( e_j + δ · tanh(γ (|g_j| − e_j) / δ) ),   e_j = max(|g_j| − τ, 0)

* ``τ = log((1 + √(d/N_t))(1 + √(d/N_i)))`` is the Marchenko–Pastur spread of a variance ratio
  estimated from ``N_t`` and ``N_i`` rows: the part of ``g_j`` beyond it cannot be sampling noise,
  and is corrected in full (``e_j``); the part within it is corrected with strength ``γ`` and
  bounded by ``δ``. The bound therefore adapts to the evidence (DESIGN.md §3, lesson 3): a strong,
  well-sampled mismatch (a planted low-rank residual) is removed, a weak or poorly sampled one
  (500 rows in 512-d) is only nudged.
* Covariances are shrunk towards isotropy with ``n₀ = prior_strength · d`` pseudo-rows
  (``Σ̃ = (N Σ + n₀ tr(Σ)/d I)/(N + n₀)``), so directions the sample cannot resolve stay close to
  ReAlign's scalar.

Why not the circular-mean phase shift of method-spec §3.5(a): on own-centred data the phases are
near-uniform, so that shift is noise and wrecks pairing (DESIGN.md §3, lesson 2). With ``γ = 0``
(or ``δ = 0`` and no significant direction) ``A = s·I`` and the map is exactly ReAlign's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .errors import InputError
from .moments import Moments

__all__ = ["ClosedForm", "fit_closed_form"]

logger = logging.getLogger(__name__)


@dataclass
class ClosedForm:
    """A fitted global map ``y = μ_i + (x − μ_t) Aᵀ`` (row form) and its diagnostics."""

    A: np.ndarray  # (d, d)
    scale: float  # ReAlign's s
    g: np.ndarray  # (d,) raw log-scale mismatch per generalised direction
    h: np.ndarray  # (d,) applied log-scale correction
    tau: float  # noise threshold on |g|

    def apply(self, x: np.ndarray, mu_text: np.ndarray, mu_image: np.ndarray) -> np.ndarray:
        """``μ_i + A(x − μ_t)`` for L2-normalised float64 rows (not renormalised)."""
        return mu_image + (x - mu_text) @ self.A.T

    def to_arrays(self, prefix: str = "cf_") -> dict[str, np.ndarray]:
        return {f"{prefix}A": self.A, f"{prefix}scale": np.asarray(self.scale), f"{prefix}g": self.g,
                f"{prefix}h": self.h, f"{prefix}tau": np.asarray(self.tau)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "cf_") -> ClosedForm:
        return cls(A=arrays[f"{prefix}A"], scale=float(arrays[f"{prefix}scale"]), g=arrays[f"{prefix}g"],
                   h=arrays[f"{prefix}h"], tau=float(arrays[f"{prefix}tau"]))


def _shrink(cov: np.ndarray, n: int, n0: float) -> np.ndarray:
    d = cov.shape[0]
    iso = np.trace(cov) / d
    out = cov * (n / (n + n0))
    out[np.diag_indices(d)] += iso * n0 / (n + n0)
    return out


def fit_closed_form(
    text: Moments,
    image: Moments,
    *,
    strength: float = 0.3,
    bound: float = 0.25,
    prior_strength: float = 7.0,
    adaptive: bool = True,
    bounded: bool = True,
) -> ClosedForm:
    """Fit the global initial map from the two modalities' moments (see the module docstring).

    Parameters
    ----------
    strength
        γ, the fraction of a within-noise mismatch that is corrected.
    bound
        δ, the largest within-noise log-scale correction.
    prior_strength
        Isotropic pseudo-rows per dimension used to shrink each covariance.
    adaptive
        Correct mismatches beyond the sampling-noise threshold in full (``False``: every direction
        gets the bounded, partial correction).
    bounded
        ``False`` is the "no bounds" ablation: ``h = g`` (a full, shrunk CORAL match).
    """
    if strength < 0 or bound < 0 or prior_strength < 0:
        raise InputError("closed form: strength, bound and prior_strength must be ≥ 0")
    d = text.dim
    tr_t, tr_i = text.trace(), image.trace()
    if tr_t <= 0 or tr_i <= 0:
        raise InputError(f"closed form: a modality has no variance (trace text={tr_t}, image={tr_i})")
    scale = math.sqrt(tr_i / (tr_t + 1e-10))
    n0 = prior_strength * d
    st = _shrink(text.covariance(), text.n, n0)
    si = _shrink(image.covariance(), image.n, n0)
    ridge = 1e-9 * np.trace(st) / d  # keeps the pencil definite when N < d and n0 = 0
    st[np.diag_indices(d)] += ridge
    si[np.diag_indices(d)] += ridge
    w, v = scipy.linalg.eigh(si, st)
    g = 0.5 * np.log(np.clip(w, 1e-300, None)) - math.log(scale)
    tau = math.log((1 + math.sqrt(d / text.n)) * (1 + math.sqrt(d / image.n)))
    mag = np.abs(g)
    if not bounded:
        h = g.copy()
    else:
        excess = np.maximum(mag - tau, 0.0) if adaptive else np.zeros_like(mag)
        inner = mag - excess
        partial = bound * np.tanh(strength * inner / bound) if bound > 0 else np.zeros_like(mag)
        h = np.sign(g) * (excess + partial)
    if np.all(h == 0):
        a_mat = np.eye(d) * scale  # exactly ReAlign's map
    else:
        a_mat = (st @ v) * (scale * np.exp(h))[None, :] @ v.T
    n_sig = int(np.sum(mag > tau)) if adaptive and bounded else 0
    logger.info("closed form: s=%.4f, τ=%.3f, %d/%d direction(s) beyond noise, max|g|=%.3f, max|h|=%.3f",
                scale, tau, n_sig, d, float(mag.max()), float(np.abs(h).max()))
    return ClosedForm(A=a_mat, scale=scale, g=g, h=h, tau=tau)
