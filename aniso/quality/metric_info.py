"""What every diagnostic and gate metric means, in one line each (shared by the run report,
``aniso diagnose`` and docs/diagnostics.md).

``S`` are the substitutes (a method's output for the text), ``X`` the raw text embeddings, ``T``
the image embeddings; every vector is L2-normalised first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MetricInfo", "METRICS", "describe", "format_value"]


@dataclass(frozen=True)
class MetricInfo:
    """One metric: what it measures, which direction is good, and the ideal value if there is one."""

    meaning: str
    better: str  # "lower", "higher", "0.5", "closer to baseline", "" (informational)


METRICS: dict[str, MetricInfo] = {
    "gap_before": MetricInfo("‖mean(X) − mean(T)‖: the text–image centroid gap before correction (all rows)", ""),
    "centroid_residual": MetricInfo("‖mean(S) − mean(T)‖: centroid gap left after correction (0 = closed)", "lower"),
    "A_r": MetricInfo("residual anisotropy λ_max/mean λ of paired residuals T−S (1 = isotropic)", "lower"),
    "A_r_baseline": MetricInfo("A_r of isotropic noise of the same size (Marchenko–Pastur edge)", ""),
    "top5_energy": MetricInfo("share of the paired residual variance in its top 5 directions", "lower"),
    "spectral_corr_log": MetricInfo("correlation of log covariance spectra of S and T (1 = same shape)", "higher"),
    "spectral_corr_linear": MetricInfo("correlation of the top-100 covariance eigenvalues of S and T", "higher"),
    "subspace_overlap@10": MetricInfo("overlap of the top-10 principal subspaces of S and T (1 = same)", "higher"),
    "subspace_overlap@10_baseline": MetricInfo("subspace overlap of random subspaces (10/d)", ""),
    "knn_overlap@10": MetricInfo("share of each row's 10 nearest neighbours kept from X to S", "higher"),
    "knn_overlap_10": MetricInfo("share of each row's 10 nearest neighbours kept from X to S", "higher"),
    "spearman": MetricInfo("rank correlation of pairwise cosines in X and in S (semantics kept)", "higher"),
    "pairwise_spearman": MetricInfo("rank correlation of pairwise cosines in X and in S (semantics kept)", "higher"),
    "mmd2": MetricInfo("multi-scale RBF MMD² between S and T (0 = same distribution)", "lower"),
    "knn_precision": MetricInfo("share of S inside the kNN support of T (realism)", "higher"),
    "knn_recall": MetricInfo("share of T inside the kNN support of S (coverage)", "higher"),
    "knn_mixing": MetricInfo("share of real images among neighbours of S in S∪T (0.5 = fully mixed)", "0.5"),
    "domain_acc": MetricInfo("kNN classifier accuracy telling S from T (0.5 = indistinguishable)", "0.5"),
    "paired_cos": MetricInfo("mean cosine of each substitute with its paired image", "higher"),
    "R@1": MetricInfo("text→image retrieval: paired image ranked first", "higher"),
    "R@5": MetricInfo("text→image retrieval: paired image within the top 5", "higher"),
    "knn_overlap_paired@10": MetricInfo("share of neighbours of S_n that are neighbours of the paired T_n", "higher"),
    "rows": MetricInfo("rows of substitutes gated", ""),
    "sample_rows": MetricInfo("rows sampled for the sample-based metrics", ""),
    "image_sample_rows": MetricInfo("image rows sampled for the distribution metrics", ""),
    "row_count": MetricInfo("substitute rows written (must equal the valid input rows)", ""),
    "ids_match_input": MetricInfo("substitute ids equal the input ids, in order", ""),
    "ids_unique": MetricInfo("no id appears twice", ""),
    "no_nan_inf": MetricInfo("rows holding NaN or Inf", "lower"),
    "unit_norm": MetricInfo("largest |‖s‖ − 1| over all rows (substitutes are unit vectors)", "lower"),
}


def describe(name: str) -> str:
    """The one-line meaning of ``name`` ('' when unknown)."""
    info = METRICS.get(name)
    return "" if info is None else info.meaning


def format_value(value: Any, digits: int = 4) -> str:
    """A metric value as a person reads it (the CLI, the Prefect artifacts and the report): ``1.604415000855397e-08`` → ``1.6e-08``, ``0.9479575`` →
    ``0.948``, integers unchanged, booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.{max(digits - 2, 1)}e}"
        return f"{value:.{digits - 1}g}" if abs(value) < 1 else f"{value:.{digits}g}"
    return str(value)
