"""AnisoAlign behind the aligner interface (docs/method.md).

Fit: joint frame → closed-form global map (centroid shift plus a shrunk, bounded,
evidence-adaptive per-direction second-moment correction), then the exact centroid calibration.
The map is ``normalize(μ_i + A(x − μ_t))``, applied row by row (:mod:`aniso.numeric.rowwise`).

The learned stages of earlier versions (a Stage I phase prior and a Stage II MLP refinement on top
of the closed form) were removed: measured, they transferred worse downstream than the closed form
at about 100x its fit time (``docs/quality.md``, "Why the learned stages lose"). Models saved
before load when they are the closed form (``learned: false``, the default then); one that holds the
learned stages' weights is refused (:meth:`AnisoAlign._set_state`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pydantic import ValidationError

from aniso.errors import ConfigError, InputError, StoreCorrupt
from aniso.methods.anisoalign.closed_form import ClosedForm, centroid_offset, fit_budget, fit_closed_form, radial_scale
from aniso.methods.anisoalign.frame import Frame, fit_frame
from aniso.methods.anisoalign.matching import fit_matched_map
from aniso.methods.base import Aligner
from aniso.methods.params import LEARNED_REMOVED, AnisoAlignParams
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.moments import Moments
from aniso.numeric.rowwise import rowwise_matmul

__all__ = ["AnisoAlign", "AnisoAlignParams"]

logger = logging.getLogger(__name__)

#: The ``capacity`` every model now stores (earlier versions also wrote ``"reduced"`` and
#: ``"full"``, for the learned stages); readers before the removal need the key.
CLOSED_FORM = "closed_form"
#: Prefixes of the learned stages' arrays in the states of earlier versions (MLP weights, prior).
_LEARNED_PREFIXES = ("ref_mlp_", "prior_")
#: The learned refinement's bounds (δ_θ, δ_ℓ, δ_V) at the defaults earlier versions had; stored
#: (``ref_bounds``) only so that a reader before the removal still loads a new model.
_LEGACY_BOUNDS = (math.pi / 8, 0.25, 0.5)


class AnisoAlign(Aligner):
    """AnisoAlign: bounded anisotropic alignment of text embeddings into the image distribution.

    Parameters
    ----------
    calibrate
        Final centroid calibration (default on).
    **params
        See :class:`AnisoAlignParams`; ablations are single flags: ``bounded=False``,
        ``adaptive=False``, ``strength=0`` (the centroid shift), ``calibrate=False``.
    """

    name = "anisoalign"
    sample_size = 20000
    default_calibrate = True
    min_rows = 4

    def __init__(self, calibrate: bool | None = None, **params: Any) -> None:
        super().__init__(calibrate=calibrate)
        try:
            self.params = AnisoAlignParams(**params)
        except ValidationError as exc:
            raise ConfigError(f"invalid AnisoAlign parameters: {exc}") from exc
        self.frame: Frame | None = None
        self.closed_form: ClosedForm | None = None
        self.calib_delta: np.ndarray | None = None

    @property
    def sampled(self) -> tuple[str, ...]:  # type: ignore[override]
        # the radial scale, the kNN budget and the calibration read text rows; only the matched
        # refinement reads image rows
        return ("text", "image") if self.params.match_rows else ("text",)

    def get_params(self) -> dict[str, Any]:
        return {"calibrate": self.calibrate, **self.params.model_dump()}

    # -- fitting ---------------------------------------------------------------------------
    def _fit(self, text_stats: Moments, image_stats: Moments, text_sample: np.ndarray | None,
             image_sample: np.ndarray | None) -> None:
        ps = self.params
        assert text_sample is not None
        d = text_stats.dim
        r = None if ps.r is None else min(ps.r, d - d % 2)
        self.frame = fit_frame(text_stats, image_stats, r=r, p=ps.p, mixing=ps.mixing, seed=ps.seed)
        cf = fit_closed_form(text_stats, image_stats, strength=ps.strength, evidence=ps.evidence, bound=ps.bound,
                             shrinkage_rows=ps.shrinkage_rows, adaptive=ps.adaptive, bounded=ps.bounded)
        deviations = text_sample - self.mu_text

        def radial(form: ClosedForm) -> float:
            return radial_scale(deviations @ form.A.T, self.mu_image)

        if ps.bounded and ps.knn_budget is not None:
            cf = fit_budget(cf, text_sample, self.mu_text, self.mu_image, budget=ps.knn_budget, rows=ps.budget_rows,
                            seed=ps.seed, radial=ps.radial)
        elif ps.match_rows:
            assert image_sample is not None
            if ps.radial:  # the premap the rows are matched on is the closed form as it would be applied
                cf = cf.with_strength(1.0, radial(cf))
            cf = fit_matched_map(cf, text_stats, image_stats, text_sample, image_sample, rows=ps.match_rows,
                                 seed=ps.seed, shrinkage_rows=ps.shrinkage_rows, knn_floor=ps.match_knn_floor,
                                 strength=ps.strength, evidence=ps.evidence, bound=ps.bound, adaptive=ps.adaptive,
                                 bounded=ps.bounded)
            if ps.radial and cf.matched:  # (the closed form, when the kNN floor refused the refinement, is scaled)
                cf = cf.scaled(radial(cf))
        elif ps.radial:
            cf = cf.with_strength(1.0, radial(cf))
        self.closed_form = cf
        self.calib_delta = self._calibration_refinement(text_sample) if self.calibrate else None

    def _calibration_refinement(self, text_sample: np.ndarray) -> np.ndarray:
        """Exact centroid calibration after renormalisation, estimated on the text sample.

        One round (eqs. 24–25) leaves ``‖mean(x*) − μ_i‖`` at up to 1e-2 because of the final
        renormalisation. We solve ``mean(normalize(x̂ + c)) = μ_i`` for ``c`` by Newton steps along
        the residual (the Jacobian of the normalised mean along the residual direction ``u`` is
        ``mean((1 − (y·u)²)/‖x̂ + c‖)``), stopping at 1e-9 or after ``calibration_rounds`` rounds;
        plain fixed-point rounds stall on concentrated image sets (ConVIRT: 8e-3 after 8 rounds).
        The streamed μ̂ is then offset by the same second-order term in :meth:`set_calibration`
        (exact when the sample is the whole text set).
        """
        xh = self._premap(text_sample)
        c0 = self.mu_image - xh.mean(0)
        c, resid, rounds = centroid_offset(xh, self.mu_image, rounds=self.params.calibration_rounds)
        logger.info("AnisoAlign calibration: in-sample centroid residual %.2e after %d round(s)", resid, rounds)
        return c - c0

    def set_calibration(self, mu_hat: np.ndarray) -> AnisoAlign:
        super().set_calibration(mu_hat)
        if self.calib_delta is not None:
            self.mu_hat = self.mu_hat - self.calib_delta
        return self

    # -- applying --------------------------------------------------------------------------
    def _premap(self, x: np.ndarray) -> np.ndarray:
        # x̂ = normalize(μ_i + A(x − μ_t)) with the frame's means, row by row (row-deterministic)
        assert self.frame is not None and self.closed_form is not None
        return l2_normalize(self.frame.mu_image + rowwise_matmul(x - self.frame.mu_text, self.closed_form.A.T))

    def _affine(self) -> tuple[np.ndarray, np.ndarray] | None:
        # the premap is normalize(μ_i + A(u − μ_t)) = normalize(A u + c)
        if self.frame is None or self.closed_form is None:
            return None
        a_mat = self.closed_form.A
        return a_mat, self.frame.mu_image - a_mat @ self.frame.mu_text

    def _centred_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        # _premap as centred_affine_rows computes it: normalize(μ_i + rowwise_matmul(u − μ_t, Aᵀ))
        if self.frame is None or self.closed_form is None:
            return None
        return self.closed_form.A.T, self.frame.mu_text, self.frame.mu_image

    # -- persistence -----------------------------------------------------------------------
    def _get_state(self) -> dict[str, np.ndarray]:
        assert self.frame is not None and self.closed_form is not None
        # ref_* and capacity are what readers before the learned stages' removal need to load
        # the closed form (the input statistics of a network that is not there; never read now)
        k = self.frame.r // 2
        state = {**self.frame.to_arrays(), **self.closed_form.to_arrays(),
                 "ref_l_mean": np.zeros(k), "ref_l_std": np.ones(k), "ref_sig_v": np.ones(self.frame.p),
                 "ref_bounds": np.array(_LEGACY_BOUNDS), "capacity": np.asarray(CLOSED_FORM)}
        if self.calib_delta is not None:
            state["calib_delta"] = self.calib_delta
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        """Load a state; a model of the learned stages (earlier versions) is refused.

        Raises
        ------
        StoreCorrupt
            The state holds the learned stages (MLP weights ``ref_mlp_*``, prior arrays
            ``prior_*``, or a ``capacity`` other than the closed form's): applying it as the closed
            form would give other substitutes than the model was published with.
        """
        learned = sorted({f"{p}*" for p in _LEARNED_PREFIXES for k in state if k.startswith(p)})
        capacity = str(state.get("capacity", CLOSED_FORM))
        if capacity != CLOSED_FORM:
            learned.append(f"capacity {capacity!r}")
        if learned:
            found = ", ".join(learned)
            raise StoreCorrupt(f"the model holds AnisoAlign's learned stages ({found}), which this aniso cannot "
                               f"apply: {LEARNED_REMOVED}")
        self.frame = Frame.from_arrays(state)
        self.closed_form = ClosedForm.from_arrays(state)
        if not self.closed_form.matched and "match_rows" not in self.params.model_fields_set:
            # a model saved before the matched refinement: say what it is
            self.params = self.params.model_copy(update={"match_rows": 0})
        self.calib_delta = state.get("calib_delta")
        if self.frame.d != self.dim:
            raise InputError(f"stored frame has d={self.frame.d}, model d={self.dim}")
