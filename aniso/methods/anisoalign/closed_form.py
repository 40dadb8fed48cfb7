"""AnisoAlign's closed form: centroid shift plus an evidence-adaptive, bounded per-direction
second-moment correction.

    y = μ_i + s · A (x − μ_t),   A = Q diag(e^{α h}) Qᵀ

* **Base: the centroid shift** (``A = I``), not ReAlign's global trace rescale, which measured worse
  than the plain shift on every real set we have (``docs/quality.md``).
* **Direction and size of the correction.** ``T = Σ̃_t^{-½} (Σ̃_t^{½} Σ̃_i Σ̃_t^{½})^{½} Σ̃_t^{-½}`` is
  the optimal-transport (Monge) map between Gaussians with the two (shrunk) covariances: the
  symmetric map that transports ``Σ̃_t`` onto ``Σ̃_i`` with the least displacement, so it moves each
  text row as little as a full second-moment match allows (no rotation, unlike whitening–colouring).
  ``T = Q diag(e^{g}) Qᵀ``: ``g_j`` is the log-scale the text needs along direction ``q_j``.
* **Evidence.** The covariances are shrunk towards isotropy with ``n₀ = shrinkage_rows · d``
  pseudo-rows (``Σ̃ = (N Σ + n₀ tr(Σ)/d I)/(N + n₀)``), so directions the sample cannot resolve
  stay close to the shift. The applied correction is

      h_j = sign(g_j) · min(max(bound, |g_j| − τ), γ_N · w_j · |g_j|),
      γ_N = strength · N / (N + evidence · d),   w_j = g_j² / (g_j² + σ²),   σ² = ½(1/N_t + 1/N_i)

  with ``N`` the harmonic mean of the two row counts. ``γ_N`` is the share of the mismatch the
  sample can support (0.44 at 400 rows in 512-d, 0.99 at 50,000); ``w_j`` drops a
  direction whose mismatch is within the sampling error of a log-variance ratio. ``τ`` is the
  Marchenko–Pastur spread of a log variance ratio from ``N_t``, ``N_i`` rows in ``d`` dimensions
  (:func:`noise_spread`): the part of a mismatch beyond it cannot be sampling noise and may be
  corrected, the rest is capped at ``bound`` (0.3 by default: at most a 35% rescale of a direction
  the sample does not resolve). So the bound, too, adapts to the evidence: on a few hundred rows in
  512-d (τ ≈ 1.5) every direction is capped, on a well-sampled low-rank residual the cap lifts.
* **kNN budget** (:func:`fit_budget`): only the share ``α ∈ [0, 1]`` of ``h`` is applied whose
  substitutes, as applied (radially scaled, centroid-calibrated), keep the kNN overlap@10 with the
  source text within ``knn_budget`` of the plain centroid shift's, measured on rows of the fitting
  text. Where a mismatch can only be matched by amplifying the text's noise (a residual
  independent of the content), the per-direction caps lift with the evidence but the
  neighbourhoods would collapse; the budget stops it. Off by default (``knn_budget=None``): on the
  demo world and the real sets it cost downstream transfer (docs/quality.md).
* **Radial scale** (:func:`radial_scale`): the deviations are scaled so that the renormalised
  substitutes' mean has the length of ``μ_i``; the calibration then only fixes its direction.
* **Calibration** is done by the aligner: the fixed-point centroid calibration after the final
  renormalisation (``AnisoAlign._calibration_refinement``), in-sample residual ≤ 1e-3.

``strength = 0`` (or ``bound = 0``) gives ``A = I``: the centroid shift (plain with ``radial=False``). ``bounded = False``
is the "no bounds" ablation ``h = g`` (a full, shrunk optimal-transport match).

Why not the circular-mean phase shift of the method notes: on own-centred data the phases are
near-uniform, so that shift is noise and wrecks pairing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from aniso.errors import InputError
from aniso.numeric.moments import Moments
from aniso.numeric.neighbours import knn_indices, neighbour_overlap

__all__ = ["ClosedForm", "centroid_offset", "fit_budget", "fit_closed_form", "noise_spread", "ot_log_scales", "radial_scale",
           "shrunk_covariance"]

logger = logging.getLogger(__name__)


@dataclass
class ClosedForm:
    """A fitted global map ``y = μ_i + (x − μ_t) Aᵀ`` (row form) and its diagnostics.

    ``A = scale · Q diag(e^{α h}) Qᵀ``: ``h`` the per-direction (evidence-bounded) log-scales, ``α``
    the share of them applied (the kNN budget, :func:`fit_budget`), ``scale`` the radial scale.
    After the matched refinement (``matched > 0`` pairs, :mod:`.matching`)
    ``A = scale · ((1 − α) A_cf + α A₂ Bᵀ)``, not symmetric, and ``g``, ``h`` are those of ``A₂``.
    """

    A: np.ndarray  # (d, d); symmetric unless matched
    g: np.ndarray  # (d,) log-scales of the full (shrunk) optimal-transport map
    h: np.ndarray  # (d,) per-direction log-scales before the budget
    gain: float  # γ_N, the evidence share
    alpha: float = 1.0  # share of h applied (kNN budget), or of the matched refinement (its kNN floor)
    scale: float = 1.0  # radial scale of the deviations
    q: np.ndarray | None = field(default=None, repr=False)  # eigenvectors (fitting only; not stored)
    matched: int = 0  # pairs of the matched refinement (0: none)

    def with_strength(self, alpha: float, scale: float = 1.0) -> ClosedForm:
        """The same directions with ``α`` of ``h`` applied and the deviations scaled by ``scale``."""
        if self.q is None or self.matched:
            raise InputError("closed form: eigenvectors are not kept after loading or matching; refit to change α")
        a_mat = np.eye(self.g.size) if alpha == 0 or not np.any(self.h) else (self.q * np.exp(alpha * self.h)) @ self.q.T
        a_mat = scale * (a_mat + a_mat.T) / 2
        return ClosedForm(A=a_mat, g=self.g, h=self.h, gain=self.gain, alpha=float(alpha), scale=float(scale), q=self.q)

    def scaled(self, scale: float) -> ClosedForm:
        """The same map with its deviations scaled by ``scale`` (the radial scale of a matched map)."""
        return ClosedForm(A=scale * self.A, g=self.g, h=self.h, gain=self.gain, alpha=self.alpha,
                          scale=self.scale * float(scale), q=self.q, matched=self.matched)

    def apply(self, x: np.ndarray, mu_text: np.ndarray, mu_image: np.ndarray) -> np.ndarray:
        """``μ_i + A(x − μ_t)`` for L2-normalised float64 rows (not renormalised)."""
        return mu_image + (x - mu_text) @ self.A.T

    def to_arrays(self, prefix: str = "cf_") -> dict[str, np.ndarray]:
        return {f"{prefix}A": self.A, f"{prefix}g": self.g, f"{prefix}h": self.h,
                f"{prefix}gain": np.asarray(self.gain), f"{prefix}alpha": np.asarray(self.alpha),
                f"{prefix}scale": np.asarray(self.scale),
                # only when matched: a closed-form model keeps the state (and content address) it had
                **({f"{prefix}matched": np.asarray(self.matched)} if self.matched else {})}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "cf_") -> ClosedForm:
        return cls(A=arrays[f"{prefix}A"], g=arrays[f"{prefix}g"], h=arrays[f"{prefix}h"],
                   gain=float(arrays[f"{prefix}gain"]), alpha=float(arrays.get(f"{prefix}alpha", 1.0)),
                   scale=float(arrays.get(f"{prefix}scale", 1.0)), matched=int(arrays.get(f"{prefix}matched", 0)))


def shrunk_covariance(cov: np.ndarray, n: int, n0: float) -> np.ndarray:
    """``(n Σ + n₀ (tr Σ / d) I) / (n + n₀)``: ``cov`` from ``n`` rows shrunk towards isotropy by ``n₀`` pseudo-rows."""
    d = cov.shape[0]
    iso = np.trace(cov) / d
    out = cov * (n / (n + n0))
    out[np.diag_indices(d)] += iso * n0 / (n + n0)
    return out


def _sym_power(c: np.ndarray, power: float, floor: float) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.clip(w, floor, None) ** power) @ v.T


def ot_log_scales(cov_text: np.ndarray, cov_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``(g, Q)`` of the Gaussian optimal-transport map ``T = Q diag(e^g) Qᵀ``
    from ``cov_text`` to ``cov_image`` (both symmetric positive definite, float64)."""
    d = cov_text.shape[0]
    floor = 1e-12 * max(np.trace(cov_text), np.trace(cov_image)) / d
    root = _sym_power(cov_text, 0.5, floor)
    inv_root = _sym_power(cov_text, -0.5, floor)
    middle = root @ cov_image @ root
    t_map = inv_root @ _sym_power((middle + middle.T) / 2, 0.5, floor * floor) @ inv_root
    lam, q = np.linalg.eigh((t_map + t_map.T) / 2)
    return np.log(np.clip(lam, 1e-300, None)), q


def noise_spread(n_text: int, n_image: int, d: int) -> float:
    """``τ = log((1 + √(d/N_t))(1 + √(d/N_i)))``: the Marchenko–Pastur spread of a log variance
    ratio estimated from ``N_t`` and ``N_i`` rows in ``d`` dimensions (pure noise stays within it)."""
    return math.log((1 + math.sqrt(d / n_text)) * (1 + math.sqrt(d / n_image)))


def fit_closed_form(
    text: Moments,
    image: Moments,
    *,
    strength: float = 1.0,
    evidence: float = 1.0,
    bound: float = 0.3,
    shrinkage_rows: float = 7.0,
    adaptive: bool = True,
    bounded: bool = True,
) -> ClosedForm:
    """Fit the global map from the two modalities' moments (see the module docstring).

    Parameters
    ----------
    strength
        γ, the share of the (evidence-weighted) mismatch that is corrected; 0 is the centroid shift.
    evidence
        κ in ``γ_N = γ N / (N + κ d)``: rows per dimension needed for half the correction.
    bound
        Largest applied log-scale of a direction whose mismatch is within the noise spread
        (``|h_j| ≤ max(bound, |g_j| − τ)``).
    shrinkage_rows
        Isotropic pseudo-rows per dimension used to shrink each covariance.
    adaptive
        ``False``: ignore the evidence (``γ_N = γ``, ``w_j = 1``).
    bounded
        ``False`` is the "no bounds" ablation: ``h = g``.
    """
    if min(strength, evidence, bound, shrinkage_rows) < 0:
        raise InputError("closed form: strength, evidence, bound and shrinkage_rows must be ≥ 0")
    d = text.dim
    tr_t, tr_i = text.trace(), image.trace()
    if not tr_t > 1e-12 or not tr_i > 1e-12:
        raise InputError(
            f"closed form: a modality has no variance (all rows identical?): trace text={tr_t:.3g}, "
            f"image={tr_i:.3g}"
        )
    n0 = shrinkage_rows * d
    st = shrunk_covariance(text.covariance(), text.n, n0)
    si = shrunk_covariance(image.covariance(), image.n, n0)
    g, q = ot_log_scales(st, si)
    n_eff = 2.0 / (1.0 / text.n + 1.0 / image.n)
    if not bounded:
        gain, h = 1.0, g.copy()
    else:
        if adaptive:
            gain = strength * n_eff / (n_eff + evidence * d)
            sigma2 = 0.5 * (1.0 / text.n + 1.0 / image.n)
            weight = g * g / (g * g + sigma2)
            cap = np.maximum(bound, np.abs(g) - noise_spread(text.n, image.n, d))
        else:
            gain, weight, cap = strength, np.ones_like(g), np.full_like(g, bound)
        h = np.sign(g) * np.minimum(cap, gain * weight * np.abs(g))
    logger.info("closed form: N=%.0f, d=%d, evidence share γ_N=%.3f, max|g|=%.3f, max|h|=%.3f, %d at the bound",
                n_eff, d, gain, float(np.abs(g).max()), float(np.abs(h).max()),
                int(np.sum(np.abs(h) >= bound)) if bounded else 0)
    return ClosedForm(A=np.eye(d), g=g, h=h, gain=float(gain), q=q).with_strength(1.0)


def radial_scale(dev: np.ndarray, mu_image: np.ndarray) -> float:
    """The scale ``s`` of the deviations with ``μ̂_i · mean(normalize(μ_i + s·dev)) = ‖μ_i‖``.

    Renormalising ``μ_i + dev`` pulls the mean inwards when the deviations are larger than the
    images' spread (and pushes it out when smaller); this scale undoes that radially, so the
    exact centroid calibration only has to fix the mean's direction. A constant added to every
    row would instead compress the substitutes unevenly (ConVIRT-500: kNN overlap 0.883 against
    0.909, ``docs/quality.md``). Bisection on ``log s`` in [−3, 3] (the projection falls as ``s``
    grows).
    """
    m = float(np.linalg.norm(mu_image))
    if m <= 1e-12:
        return 1.0
    u = mu_image / m

    def proj(log_s: float) -> float:
        y = mu_image + math.exp(log_s) * dev
        return float(np.mean((y @ u) / np.linalg.norm(y, axis=1)))

    lo, hi = -3.0, 3.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if proj(mid) > m else (lo, mid)
    return math.exp((lo + hi) / 2)


def fit_budget(
    cf: ClosedForm,
    text: np.ndarray,
    mu_text: np.ndarray,
    mu_image: np.ndarray,
    *,
    budget: float,
    rows: int = 2000,
    seed: int = 0,
    radial: bool = True,
    steps: int = 5,
) -> ClosedForm:
    """Apply as much of the correction as the text's neighbourhoods allow.

    ``α ∈ [0, 1]`` is the largest share of ``h`` whose substitutes keep the kNN overlap@10 with
    the source text within ``budget`` of the plain centroid shift's (``normalize(x − μ_t + μ_i)``,
    the baseline the default must not fall behind), both measured on ``rows`` seeded rows of the
    fitting text (rows used unpaired: no pairs, no held-out data). Each candidate is measured as it
    will be applied: radially scaled (when ``radial``) and centroid-calibrated on those rows, since
    both move the neighbourhoods too (the radial scale alone cost 0.018 of kNN overlap on the
    planted set). ``α = 1`` when the whole correction is within budget, else bisection (``steps``
    halvings); ``α = 0`` when even the calibrated shift is not. This is the bound that stops
    over-correction where the sample resolves a mismatch that a linear map can only correct by
    amplifying the text's noise (a planted residual independent of the text: the per-direction
    caps lift there, the neighbourhoods would not survive).
    """
    n = text.shape[0]
    pick = np.sort(np.random.default_rng(seed).choice(n, min(rows, n), replace=False))
    x = text[pick]
    dev = x - mu_text
    k = min(10, x.shape[0] - 1)
    ref = knn_indices(x, x, k, exclude_self=True)

    def overlap(y: np.ndarray) -> float:
        return neighbour_overlap(ref, y / np.linalg.norm(y, axis=1, keepdims=True))

    def at(alpha: float) -> tuple[ClosedForm, float]:
        m = cf.with_strength(alpha)
        d = dev @ m.A.T
        s = radial_scale(d, mu_image) if radial else 1.0
        y = mu_image + s * d
        return cf.with_strength(alpha, s), overlap(y + centroid_offset(y, mu_image)[0])

    shift_knn = overlap(mu_image + dev)
    best, best_knn = at(1.0)  # the whole correction: most often within budget, then nothing else is measured
    if shift_knn - best_knn > budget and np.any(cf.h):
        best, best_knn = at(0.0)
    if shift_knn - best_knn <= budget and best.alpha < 1.0:
        lo, hi = 0.0, 1.0
        for _ in range(steps):
            mid = (lo + hi) / 2
            cand, knn = at(mid)
            if shift_knn - knn <= budget:
                best, best_knn, lo = cand, knn, mid
            else:
                hi = mid
    logger.info("closed form: kNN budget %.3f on %d rows: α=%.3f, kNN overlap %.3f (shift %.3f), radial scale %.3f",
                budget, x.shape[0], best.alpha, best_knn, shift_knn, best.scale)
    return best


def centroid_offset(premapped: np.ndarray, mu_image: np.ndarray, *, rounds: int = 50,
                    tol: float = 1e-9) -> tuple[np.ndarray, float, int]:
    """The offset ``c`` with ``mean(normalize(premapped + c)) = mu_image`` (Newton-like steps).

    Each step moves ``c`` by the residual divided by the mean radial derivative of the
    renormalisation along it. Returns ``(c, residual, rounds used)``.
    """
    c = mu_image - premapped.mean(0)
    resid, used = float("inf"), 0
    for used in range(1, rounds + 1):
        v = premapped + c
        norm = np.linalg.norm(v, axis=1)
        y = v / norm[:, None]
        r = mu_image - y.mean(0)
        resid = float(np.linalg.norm(r))
        if resid < tol:
            break
        u = r / resid
        gain = float(np.mean((1.0 - (y @ u) ** 2) / norm))
        c = c + r / max(gain, 1e-3)
    return c, resid, used
