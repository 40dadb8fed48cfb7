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

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aniso.errors import ConfigError
from aniso.methods.table import method_entry

__all__ = [
    "MethodParams",
    "NoParams",
    "C3Params",
    "MomentMatchParams",
    "AnisoAlignParams",
    "REMOVED_LEARNED_PARAMS",
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


#: Parameters of AnisoAlign's learned stages (Stage I phase prior, Stage II MLP refinement), removed
#: in issue 23: measured, they transferred worse downstream than the closed form at about 100x its
#: fit time (docs/quality.md, "Why the learned stages lose"). Models saved before store them in their
#: ``aligner.json``; they are dropped when they are inert (see ``AnisoAlignParams._former_names``).
REMOVED_LEARNED_PARAMS = frozenset({
    "learned", "use_prior", "min_samples_learned", "full_capacity_samples", "hidden", "prior_hidden",
    "prior_steps", "refine_steps", "batch_size", "delta_theta", "delta_ell", "delta_v", "w_prior", "w_dist",
    "w_rel", "w_inst", "w_reg", "device", "torch_threads",
})

LEARNED_REMOVED = ("AnisoAlign's learned stages (Stage I phase prior, Stage II MLP refinement) were removed: "
                   "measured, they transferred worse downstream than the closed form at about 100x its fit time "
                   "(docs/quality.md, 'Why the learned stages lose'); refit with learned: false (the closed form)")


class AnisoAlignParams(MethodParams):
    """Validated hyper-parameters of :class:`AnisoAlign` (all JSON-able)."""

    r: int | None = Field(64, description="rank (even) of the joint frame's dominant subspace U (stored with the model); None: the smallest rank holding the energy rule's share of Σ")
    p: int = Field(64, ge=0, description="leading directions of U's complement kept in the stored frame (P)")
    mixing: Literal["haar", "identity"] = Field("haar", description="the stored frame's mixing matrix R: fixed-seed Haar or the identity")
    seed: int = Field(0, description="seed of the row samples, the kNN budget's rows and the frame's Haar R")
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
    match_rows: int = Field(4000, ge=0, description="rows of the text sample matched one to one with image rows to refine the closed form with the rotation its moments cannot see (0: the closed form alone; off when knn_budget is set or strength is 0)")
    match_knn_floor: float = Field(0.5, ge=0, le=1, description="least kNN overlap@10 with the source text the matched refinement must keep on the fitting text; below it the refinement is halved, then dropped")
    radial: bool = Field(True, description="scale the deviations radially so renormalisation keeps the centroid's length")
    calibration_rounds: int = Field(50, ge=1, description="most Newton rounds of the exact centroid calibration")

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        """Parameter sets of earlier versions (settings, and the ``aligner.json`` of saved models).

        * the learned stages' parameters (:data:`REMOVED_LEARNED_PARAMS`) are dropped while
          ``learned`` is false: they never changed a closed-form model;
        * ``learned: true``, or ``closed_form_only: false`` without ``learned`` (the switch before
          ``learned``, whose default ran the learned stages), asks for the removed stages: refused;
        * ``closed_form_only`` otherwise, and ``prior_strength`` (now ``shrinkage_rows``, an alias),
          still load.
        """
        if not isinstance(data, dict) or not (REMOVED_LEARNED_PARAMS | {"closed_form_only"}) & data.keys():
            return data
        data = dict(data)
        closed_form_only = data.pop("closed_form_only", None)
        if "learned" in data:
            learned = _as_bool(data["learned"])
        else:
            learned = False if closed_form_only is None else _as_bool(closed_form_only) is not True
        if learned is not False:  # true, or not a boolean: never dropped silently
            raise PydanticCustomError("learned_removed", LEARNED_REMOVED)
        return {k: v for k, v in data.items() if k not in REMOVED_LEARNED_PARAMS}

    @model_validator(mode="after")
    def _budget_consistent(self) -> AnisoAlignParams:
        # The kNN budget limits the closed form's share and the matched refinement would move the
        # neighbourhoods past it; strength 0 is the centroid shift, which the refinement would turn.
        # Either turns the refinement off (refused when both are asked for).
        for name, off in (("knn_budget", self.knn_budget is not None), ("strength", self.strength == 0)):
            if off and self.match_rows:
                if {"match_rows", name} <= self.model_fields_set:
                    what = "with a knn_budget" if name == "knn_budget" else "with strength 0 (the centroid shift)"
                    raise ValueError(f"{name} applies to the closed form alone: {what} set match_rows to 0")
                self.match_rows = 0
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


def _as_bool(value: Any) -> bool | None:
    """``value`` read as pydantic reads a ``bool`` field (``"true"``, ``1``, ...); None: not a boolean."""
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        return None


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
            f"{_where(where, err['loc'])}{err['msg']}{_did_you_mean(err, model)}" for err in exc.errors()
        )
        raise ConfigError(f"invalid parameters for method {name!r}: {problems}") from None
    return params


def _where(where: str, loc: tuple[Any, ...]) -> str:
    """``"<where><field>: "``; for an error of the whole parameter set (no field) ``"<where>: "``."""
    if loc:
        return f"{where}{'.'.join(str(p) for p in loc)}: "
    where = where.rstrip(" .:")
    return f"{where}: " if where else ""


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
