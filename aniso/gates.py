"""Quality gates on the per-shard summaries written during apply.

Gates read the small per-shard stats (row counts, norms, NaN counts, vector sums, id digests),
never the raw embeddings, so they cost almost nothing next to apply. Every check yields a
:class:`GateResult` with its observed value and bound; publication happens only when all pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import GateSettings

__all__ = ["GateResult", "GateReport", "evaluate_gates"]


@dataclass(frozen=True)
class GateResult:
    name: str
    observed: Any
    bound: str
    passed: bool


@dataclass
class GateReport:
    results: list[GateResult] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        if self.passed:
            return f"all {len(self.results)} gates passed"
        return "; ".join(f"{r.name}: observed {r.observed}, required {r.bound}" for r in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) for r in self.results], "metrics": self.metrics}


def evaluate_gates(
    shard_stats: list[dict[str, Any]],
    *,
    expected_rows: int,
    ids_match: bool,
    mu_image: np.ndarray,
    settings: GateSettings,
) -> GateReport:
    """Evaluate the gates of a run from its per-shard stats.

    Parameters
    ----------
    shard_stats
        The ``stats`` dict of every substitutes shard marker (see ``pipeline.shard_quality``).
    expected_rows
        Valid text rows in the input: the substitutes must have exactly as many.
    ids_match
        Whether the substitutes' ids equal the input's, shard by shard.
    mu_image
        The image centroid the substitutes must be centred on.
    """
    rows = sum(s["rows"] for s in shard_stats)
    nonfinite = sum(s["nonfinite_rows"] for s in shard_stats)
    total = np.sum([np.asarray(s["sum"]) for s in shard_stats], axis=0)
    residual = float(np.linalg.norm(total / max(rows, 1) - mu_image))
    text_total = np.sum([np.asarray(s["text_sum"]) for s in shard_stats], axis=0)
    gap_before = float(np.linalg.norm(text_total / max(rows, 1) - mu_image))
    norm_dev = max(max(abs(s["norm_min"] - 1.0), abs(s["norm_max"] - 1.0)) for s in shard_stats)
    ids_unique = all(s["ids_unique"] for s in shard_stats)
    tol = settings.norm_tolerance
    results = [
        GateResult("row_count", rows, f"== {expected_rows}", rows == expected_rows),
        GateResult("ids_match_input", ids_match and ids_unique, "== True", ids_match and ids_unique),
        GateResult("no_nan_inf", nonfinite, "== 0", nonfinite == 0),
        GateResult("unit_norm", norm_dev, f"<= {tol}", norm_dev <= tol),
        GateResult("centroid_residual", residual, f"<= {settings.centroid_residual_max}",
                   residual <= settings.centroid_residual_max),
    ]
    return GateReport(results, {"centroid_residual": residual, "gap_before": gap_before, "rows": rows})
