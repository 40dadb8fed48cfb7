"""The one table of alignment methods: CLI name → class, parameter model, statistics needed.

Everything that lists methods reads this table: settings validation
(:func:`aniso.methods.params.validate_method`), the lazy exports of :mod:`aniso` and
:mod:`aniso.methods`, :func:`aniso.methods.get_aligner`, the statistics stage (which moments a run
computes), the CLI's ``--method`` help and the aligner contract tests. Adding a method means writing
its class (with ``name`` set to the table's key) and adding its row here.

The table is plain data (strings, no imports), so reading it costs nothing: the classes load on
first use and ``import aniso`` never imports torch, pydantic or numpy for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from aniso.methods.base import Aligner
    from aniso.methods.params import MethodParams

__all__ = ["MethodEntry", "METHODS", "method_entry"]


@dataclass(frozen=True)
class MethodEntry:
    """One method: where its class lives and what a run needs for it.

    Attributes
    ----------
    name
        The CLI / settings name (``method.name``), also the class's ``name``.
    target
        ``"module:Class"`` of the aligner class.
    params
        Name of its parameter model in :mod:`aniso.methods.params` (``calibrate`` aside).
    statistics
        ``"full"`` (mean and d×d co-moment) or ``"trace"`` (mean and tr Σ): what its fit reads.
    summary
        One line for help texts.
    execution_params
        Parameters that change how a fit runs, never its result: left out of the run key.
    """

    name: str
    target: str
    params: str
    statistics: Literal["full", "trace"]
    summary: str
    execution_params: frozenset[str] = frozenset()

    @property
    def class_name(self) -> str:
        return self.target.rsplit(":", 1)[1]

    @property
    def module(self) -> str:
        return self.target.rsplit(":", 1)[0]

    def load(self) -> type[Aligner]:
        """The aligner class (imports its module on first use)."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def params_model(self) -> type[MethodParams]:
        """The parameter model class (pydantic; imported on first use)."""
        return getattr(importlib.import_module("aniso.methods.params"), self.params)


_BASELINES = "aniso.methods.baselines"

#: Every method, in the order help texts list them.
METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry("identity", f"{_BASELINES}:Identity", "NoParams", "trace", "raw text, renormalised (no alignment)"),
        MethodEntry("centroid", f"{_BASELINES}:CentroidShift", "NoParams", "trace", "centroid shift x − μ_t + μ_i"),
        MethodEntry("realign", f"{_BASELINES}:ReAlign", "NoParams", "trace", "ReAlign: centroid shift and global trace rescale"),
        MethodEntry("c3", f"{_BASELINES}:C3", "C3Params", "trace", "C3: centroid shift plus training-time noise"),
        MethodEntry("moment", f"{_BASELINES}:MomentMatch", "MomentMatchParams", "full", "MomentMatch: shrunk covariance matching (CORAL)"),
        # torch_threads and device were the removed learned stages' (AnisoAlignParams drops them when
        # inert): still left out, so settings that name them keep the run key they had
        MethodEntry("anisoalign", "aniso.methods.anisoalign.aligner:AnisoAlign", "AnisoAlignParams", "full",
                    "AnisoAlign: bounded, evidence-adaptive anisotropic correction",
                    execution_params=frozenset({"torch_threads", "device"})),
    )
}


def method_entry(name: str) -> MethodEntry:
    """The table row of ``name``.

    Raises
    ------
    ConfigError
        Naming ``method.name`` and every available method.
    """
    try:
        return METHODS[name]
    except KeyError:
        from aniso.errors import ConfigError

        raise ConfigError(f"method.name: unknown method {name!r}; available: {', '.join(METHODS)}") from None
