"""Training-free baselines: Identity, CentroidShift and ReAlign (method-spec §4.1, §4.2, §4.4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import l2_normalize
from ..moments import Moments
from .base import Aligner

__all__ = ["Identity", "CentroidShift", "ReAlign"]


class Identity(Aligner):
    """No alignment: ``x* = normalize(x_t)`` (the lower bound)."""

    name = "identity"
    default_calibrate = False

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        pass

    def _premap(self, x: np.ndarray) -> np.ndarray:
        return x


class CentroidShift(Aligner):
    """Global centroid shift: ``x* = normalize(x_t − μ_t + μ_i)`` (ReAlign's anchor step)."""

    name = "centroid"
    default_calibrate = False

    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: Any, image_sample: Any) -> None:
        pass

    def _premap(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(x - self.mu_text + self.mu_image)


class ReAlign(Aligner):
    """ReAlign: anchor → trace → centroid (method-spec §4.4, eqs. 26–30).

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

    def _get_state(self) -> dict[str, np.ndarray]:
        return {"scale": np.asarray(self.scale)}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.scale = float(state["scale"])
