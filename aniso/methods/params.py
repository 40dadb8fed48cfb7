"""Each method's hyper-parameter model, importable without torch.

``method.params`` is validated against the model of ``method.name`` when the settings load
(:func:`aniso.config.load_settings`), so a misspelt or out-of-range parameter fails before any
work starts. Which model belongs to which method is a column of the method table
(:data:`aniso.methods.table.METHODS`); each aligner class exposes its model as ``Params``.
``calibrate`` (every method's switch for the final centroid calibration) is common to all.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aniso.errors import ConfigError
from aniso.methods.table import method_entry

__all__ = [
    "MethodParams",
    "NoParams",
    "C3Params",
    "MomentMatchParams",
    "AnisoAlignParams",
    "validate_method",
    "semantic_params",
]


class MethodParams(BaseModel):
    """Base of every parameter model: unknown names are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid")


class NoParams(MethodParams):
    """Methods without hyper-parameters (beyond ``calibrate``)."""


class C3Params(MethodParams):
    """:class:`aniso.methods.C3`: the training-time noise and its seed."""

    noise: float = Field(math.sqrt(0.016), ge=0, description="standard deviation of the Gaussian noise added to each row (C3's own training default √0.016; 0: the plain centroid shift, for evaluation)")
    seed: int = Field(0, description="seed of the per-row noise")


class MomentMatchParams(MethodParams):
    """:class:`aniso.methods.MomentMatch`: shrinkage of both covariances towards isotropy."""

    shrinkage: float = Field(0.0, ge=0.0, le=1.0)


class AnisoAlignParams(MethodParams):
    """Validated hyper-parameters of :class:`AnisoAlign` (all JSON-able)."""

    r: int | None = Field(64, description="rank (even) of the joint frame's dominant subspace U, where the learned stages work in polar blocks; None: the smallest rank holding the energy rule's share of Σ")
    p: int = Field(64, ge=0, description="leading directions of U's complement that Stage II also corrects (learned stages only)")
    mixing: Literal["haar", "identity"] = "haar"
    seed: int = 0
    # closed form
    strength: float = Field(1.0, ge=0, description="share of the evidence-weighted mismatch corrected; 0: centroid shift")
    evidence: float = Field(1.0, ge=0, description="rows per dimension for half the correction")
    bound: float = Field(0.3, ge=0, description="largest log-scale correction per direction")
    shrinkage_rows: float = Field(7.0, ge=0, validation_alias=AliasChoices("shrinkage_rows", "prior_strength"),
                                  description="isotropic pseudo-rows per dimension the covariances are shrunk with (closed form; was 'prior_strength', which still loads)")
    adaptive: bool = True
    bounded: bool = True
    knn_budget: float | None = Field(None, ge=0, description="largest kNN-overlap@10 loss against the centroid shift, measured on the fitting text; None (the default since issue 23: it transfers best downstream, docs/quality.md): no budget")
    budget_rows: int = Field(2000, ge=11, description="text rows the kNN budget is measured on")
    radial: bool = Field(True, description="scale the deviations radially so renormalisation keeps the centroid's length")
    # learned stages (off by default: on every corpus measured they did not pay for their cost,
    # see docs/quality.md)
    learned: bool = Field(False, description="train the learned stages (Stage I phase prior, Stage II refinement) when the samples allow it; false: the closed form alone")
    use_prior: bool = True
    min_samples_learned: int = Field(5000, ge=2)
    full_capacity_samples: int = Field(20000, ge=2)
    hidden: int = Field(512, gt=0)
    prior_hidden: int = Field(256, gt=0)
    prior_steps: int = Field(1000, ge=0)
    refine_steps: int = Field(1000, ge=0)
    batch_size: int = Field(1024, gt=1)
    delta_theta: float = Field(math.pi / 8, ge=0, description="Stage II bound on each block's phase correction (radians, tanh-bounded)")
    delta_ell: float = Field(0.25, ge=0, description="Stage II bound on each block's log-radius correction")
    delta_v: float = Field(0.5, ge=0, description="Stage II bound on each complement coordinate's correction (in units of its spread)")
    w_prior: float = Field(1.0, description="Stage II loss weight: energy of the Stage I prior on the corrected phases")
    w_dist: float = Field(1.0, description="Stage II loss weight: MMD between corrected text and image batches")
    w_rel: float = Field(1.0, description="Stage II loss weight: in-batch cosine structure kept (relational)")
    w_inst: float = Field(0.5, description="Stage II loss weight: each row's correction along its own residual direction (instance)")
    w_reg: float = Field(1e-3, description="Stage II loss weight: size of the corrections (regulariser)")
    device: str | None = None
    torch_threads: int | None = Field(1, gt=0, description="CPU threads for training (1 measured 1.9–4.5× faster than torch's default on a loaded 2-core machine; None: torch's default)")
    calibration_rounds: int = Field(50, ge=1, description="most Newton rounds of the exact centroid calibration")

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        # ``closed_form_only: true`` (an earlier switch) meant what ``learned: false`` means now
        if isinstance(data, dict) and "closed_form_only" in data:
            data = dict(data)
            if data.pop("closed_form_only"):
                data["learned"] = False
        return data

    @model_validator(mode="after")
    def _budget_needs_bounds(self) -> AnisoAlignParams:
        # The kNN budget limits the bounded correction; without bounds it would be ignored, so an
        # explicit budget is refused and the implicit default is cleared (get_params tells the truth).
        if not self.bounded and self.knn_budget is not None:
            if "knn_budget" in self.model_fields_set:
                raise ValueError("knn_budget applies to the bounded correction only: with bounded=false set knn_budget to null")
            self.knn_budget = None
        return self

    @field_validator("r")
    @classmethod
    def _even_rank(cls, r: int | None) -> int | None:
        if r is not None and (r <= 0 or r % 2):
            raise ValueError(f"r must be a positive even number, got {r}")
        return r


def validate_method(name: str, params: dict[str, Any], *, where: str = "method.params.") -> dict[str, Any]:
    """Check ``name`` and ``params`` against the method's model; return the params as given.

    The settings (``where="method.params."``) and every aligner's constructor (``where=""``)
    validate through here, so a parameter is refused the same way wherever it is given.

    Raises
    ------
    ConfigError
        Naming ``method.name`` (unknown method) or ``<where><field>`` (bad parameter).
    """
    entry = method_entry(name)
    rest = dict(params)
    calibrate = rest.pop("calibrate", None)
    if calibrate is not None and not isinstance(calibrate, bool):
        raise ConfigError(f"{where}calibrate: expected true or false, got {calibrate!r}")
    model = entry.params_model()
    try:
        model.model_validate(rest)
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}{_did_you_mean(err, model)}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid parameters for method {name!r}: {problems}") from None
    return params


def _did_you_mean(err: Any, model: type[BaseModel]) -> str:
    """For an unknown parameter, the closest names the method does take (``shrink`` → ``shrinkage``)."""
    if err.get("type") != "extra_forbidden" or not err.get("loc"):
        return ""
    known = [*model.model_fields, "calibrate"]
    close = difflib.get_close_matches(str(err["loc"][-1]), known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else f" (it takes: {', '.join(known)})"


def semantic_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the method's execution-only parameters (what enters the run key)."""
    skip = method_entry(name).execution_params
    return {k: v for k, v in params.items() if k not in skip}
