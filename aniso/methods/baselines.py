"""Training-free baselines: Identity, CentroidShift, C3, ReAlign and MomentMatch (docs/method.md §7)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aniso.methods.base import Aligner
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.moments import Moments
from aniso.numeric.rowwise import row_normals, rowwise_matmul

__all__ = ["Identity", "CentroidShift", "C3", "ReAlign", "MomentMatch"]


class Identity(Aligner):
    """No alignment: ``x* = normalize(x_t)`` (the lower bound)."""

    name = "identity"
    default_calibrate = False

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        pass

    def _premap(self, x: np.ndarray) -> np.ndarray:
        return x

    def _affine(self) -> tuple[float, np.ndarray]:
        return 1.0, np.zeros(self.dim or 0)


class CentroidShift(Aligner):
    """Global centroid shift: ``x* = normalize(x_t − μ_t + μ_i)`` (ReAlign's anchor step)."""

    name = "centroid"
    default_calibrate = False

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        pass

    def _premap(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(x - self.mu_text + self.mu_image)

    def _affine(self) -> tuple[float, np.ndarray]:
        return 1.0, self.mu_image - self.mu_text


class ReAlign(Aligner):
    """ReAlign: anchor → trace → centroid (docs/method.md §7).

    ``s = sqrt(E‖x_i − μ_i‖² / (E‖x_t − μ_t‖² + 1e-10))``, ``x' = normalize(μ_i + s(x_t − μ_t))``,
    then the centroid calibration ``x* = normalize(x' − μ' + μ_i)``.
    """

    name = "realign"
    default_calibrate = True

    def __init__(self, calibrate: bool | None = None) -> None:
        super().__init__(calibrate=calibrate)
        self.scale: float | None = None

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        self.scale = float(np.sqrt(image_stats.trace() / (text_stats.trace() + 1e-10)))

    def _premap(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize((x - self.mu_text) * self.scale + self.mu_image)

    def _affine(self) -> tuple[float, np.ndarray]:
        return self.scale, self.mu_image - self.scale * self.mu_text

    def _get_state(self) -> dict[str, np.ndarray]:
        return {"scale": np.asarray(self.scale)}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.scale = float(state["scale"])


class C3(Aligner):
    """C3 (Zhang et al., ICLR 2024), variant (b) (docs/method.md §7), into raw image space.

    ``x* = normalize(normalize(x_t) − μ_t + μ_i + σξ)``, ``ξ ~ N(0, I)``. C3 adds the noise while
    *training* a downstream model, which is what substitutes are for, so ``noise`` defaults to C3's
    own training level ``sqrt(0.016)``; ``noise=0`` is the plain centroid shift (for evaluating
    the geometry alone). Each row's noise is keyed on ``seed`` and the row itself
    (:func:`aniso.numeric.rowwise.row_normals`), so the output does not depend on how rows are
    sharded, and equal rows get equal noise.
    """

    name = "c3"
    default_calibrate = False
    #: C3's own noise level, ``--noise_level`` default in its ``run.py``.
    TRAIN_NOISE = math.sqrt(0.016)

    def __init__(self, calibrate: bool | None = None, noise: float = TRAIN_NOISE, seed: int = 0) -> None:
        super().__init__(calibrate=calibrate)
        self.noise = float(noise)
        self.seed = int(seed)

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "noise": self.noise, "seed": self.seed}

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        pass

    def _premap(self, x: np.ndarray) -> np.ndarray:
        y = x - self.mu_text + self.mu_image
        if self.noise > 0:
            y = y + row_normals(x, self.seed) * self.noise  # keyed per row: chunk-invariant
        return l2_normalize(y)

    def _affine(self) -> tuple[float, np.ndarray] | None:
        return None if self.noise > 0 else (1.0, self.mu_image - self.mu_text)


def _sym_power(cov: np.ndarray, power: float) -> np.ndarray:
    """``cov^power`` of a symmetric PSD matrix via float64 eigh (eigenvalues floored at 0)."""
    w, v = np.linalg.eigh(cov)
    w = np.clip(w, 0.0, None)
    with np.errstate(divide="ignore"):
        wp = np.where(w > 0, w**power, 0.0)
    return (v * wp) @ v.T


class MomentMatch(Aligner):
    """Moment matching (CORAL / whitening–colouring), docs/method.md §7.

    ``x* = normalize(μ_i + Σ_i^{1/2} (Σ_t + λI)^{-1/2} (x_t − μ_t))`` with ``λ = 1e-6·tr(Σ_t+Σ_i)/d``
    and float64 eigen-square-roots. ``shrinkage`` ∈ [0, 1] optionally shrinks both covariances
    towards isotropy first (``(1−α)Σ + α tr(Σ)/d·I``); 0 is the plain definition.
    """

    name = "moment"
    default_calibrate = False

    def __init__(self, calibrate: bool | None = None, shrinkage: float = 0.0) -> None:
        super().__init__(calibrate=calibrate)
        self.shrinkage = float(shrinkage)
        self.matrix: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "shrinkage": self.shrinkage}

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        d = text_stats.dim
        st, si = text_stats.covariance(), image_stats.covariance()
        lam = 1e-6 * (np.trace(st) + np.trace(si)) / d
        if self.shrinkage > 0:
            a = self.shrinkage
            st = (1 - a) * st + a * np.trace(st) / d * np.eye(d)
            si = (1 - a) * si + a * np.trace(si) / d * np.eye(d)
        self.matrix = _sym_power(si, 0.5) @ _sym_power(st + lam * np.eye(d), -0.5)

    def _premap(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(self.mu_image + rowwise_matmul(x - self.mu_text, self.matrix.T))

    # No fused float32 form (``_affine``): whitening makes M ill-conditioned (singular values 0.2–9
    # measured on narrow cones), and M u + c then cancels in float32 (errors 4e-6, 10x AnisoAlign's
    # bounded map), so the moment match always applies with the float64 map.

    def _centred_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return None if self.matrix is None else (self.matrix.T, self.mu_text, self.mu_image)

    def _get_state(self) -> dict[str, np.ndarray]:
        return {"matrix": self.matrix}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.matrix = state["matrix"]
