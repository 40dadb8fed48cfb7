"""What the gates judge: the shard table, the centroid metrics and the sample metrics.

Plain numpy/pandas, no great-expectations: :mod:`aniso.quality.gates` evaluates these tables against the
suites; :mod:`aniso.stages.gate` computes them for a run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from aniso.config import GateSettings
from aniso.errors import InputError

__all__ = ["SHARD_COLUMNS", "shard_table", "centroid_metrics", "sample_metrics"]

#: Columns of the shard table; bool columns are stored as 0/1 so GX aggregates them.
SHARD_COLUMNS = ("shard", "rows", "nonfinite_rows", "norm_min", "norm_max", "norm_mean", "norm_dev",
                 "ids_unique", "ids_match")


def shard_table(shard_stats: list[dict[str, Any]], ids_match: list[bool]) -> pd.DataFrame:
    """The ``shard_stats`` table: one row per shard marker's stats (see ``pipeline.shard_quality``).

    ``norm_dev`` is the largest ``|‖s‖ − 1|`` in the shard; bools become 0/1.
    """
    if len(shard_stats) != len(ids_match):
        raise InputError(f"{len(shard_stats)} shard stats but {len(ids_match)} id checks")
    rows = []
    for shard, (stats, match) in enumerate(zip(shard_stats, ids_match)):
        rows.append({
            "shard": shard,
            "rows": int(stats["rows"]),
            "nonfinite_rows": int(stats["nonfinite_rows"]),
            "norm_min": float(stats["norm_min"]),
            "norm_max": float(stats["norm_max"]),
            "norm_mean": float(stats["norm_mean"]),
            "norm_dev": max(abs(float(stats["norm_min"]) - 1.0), abs(float(stats["norm_max"]) - 1.0)),
            "ids_unique": int(bool(stats["ids_unique"])),
            "ids_match": int(bool(match)),
        })
    return pd.DataFrame(rows, columns=list(SHARD_COLUMNS))


def centroid_metrics(shard_stats: list[dict[str, Any]], mu_image: np.ndarray, mu_text: np.ndarray) -> dict[str, Any]:
    """Centroid residual after (substitutes, from the shards' vector sums) and before (the text
    centroid the model was fitted on).

    The non-finite rows are excluded from the substitutes' sum by ``shard_quality``, so the
    residual stays finite and the ``no_nan_inf`` gate reports them instead.
    """
    mu_image = np.asarray(mu_image, dtype=np.float64)
    rows = sum(int(s["rows"]) for s in shard_stats)
    finite_rows = rows - sum(int(s["nonfinite_rows"]) for s in shard_stats)
    total = np.sum([np.asarray(s["sum"], dtype=np.float64) for s in shard_stats], axis=0)
    return {
        "rows": rows,
        "centroid_residual": float(np.linalg.norm(total / max(finite_rows, 1) - mu_image)),
        "gap_before": float(np.linalg.norm(np.asarray(mu_text, dtype=np.float64) - mu_image)),
    }


def sample_metrics(
    text: np.ndarray, subs: np.ndarray, image: np.ndarray | None, *, settings: GateSettings,
) -> dict[str, Any]:
    """Semantic preservation (gated) and distribution compatibility (reported) on samples.

    Parameters
    ----------
    text, subs
        Row-aligned samples of text rows and their substitutes. When ``subs is text`` (the
        report's raw-text reference) the semantic metrics are 1 by definition and not computed.
    image
        A sample of image rows, or ``None`` (the distribution metrics are then left out).
    """
    from aniso.quality.diagnostics import (
        domain_classifier_accuracy,
        knn_overlap,
        knn_precision_recall,
        mmd2_rbf,
        pairwise_spearman,
    )

    out: dict[str, Any] = {"sample_rows": int(text.shape[0])}
    if text.shape[0] < 12 or not (np.isfinite(subs).all() and np.isfinite(text).all()):
        # Too few rows for a k=10 neighbourhood, or a NaN/Inf (reported by no_nan_inf): the
        # semantic gates cannot be computed, so they fail with observed NaN.
        out.update(knn_overlap_10=math.nan, spearman=math.nan)
        return out
    if subs is text:  # a set's neighbours and distance ranks are its own
        out["knn_overlap_10"], out["spearman"] = 1.0, 1.0
    else:
        out["knn_overlap_10"] = knn_overlap(text, subs, 10)
        out["spearman"] = pairwise_spearman(text, subs, n_pairs=settings.spearman_pairs, seed=settings.seed)
    if image is not None and image.shape[0] >= 4:
        m = min(settings.distribution_sample_rows, subs.shape[0], image.shape[0])
        s, t = subs[:m], image[:m]
        out["image_sample_rows"] = int(t.shape[0])
        out["mmd2"] = mmd2_rbf(s, t)
        pr = knn_precision_recall(s, t)
        out["knn_precision"], out["knn_recall"] = pr["precision"], pr["recall"]
        out["domain_acc"] = domain_classifier_accuracy(s, t, seed=settings.seed)
    return out


