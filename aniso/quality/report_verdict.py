"""The run report's opening: one sentence per gate family, each against the centroid-shift
baseline, and a caption for each plot (:func:`aniso.quality.report.render_html` shows both).

A reader should learn from the first lines whether the method did better than the simplest
correction it is printed beside, not only whether the gates passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aniso.quality.metric_info import METRICS, format_value

__all__ = ["BASELINE", "FAMILIES", "PLOT_CAPTIONS", "verdicts"]

#: The reference column of the centroid shift (:func:`aniso.quality.report.reference_stand_ins`).
BASELINE = "baseline (centroid shift)"

#: Gate families, their metrics (those present are judged) and how a sentence names each metric.
FAMILIES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Centroid", (("centroid_residual", "centroid gap left"),)),
    ("Distribution", (("domain_acc", "domain accuracy"), ("mmd2", "MMD²"), ("knn_precision", "kNN precision"),
                      ("knn_recall", "kNN recall"))),
    ("Semantics", (("knn_overlap@10", "kNN overlap@10"), ("pairwise_spearman", "pairwise Spearman"))),
)

#: One caption per plot of :func:`aniso.quality.report.render_plots`, in order.
PLOT_CAPTIONS = (
    "Covariance spectra of the text, substitute and image samples (eigenvalues over the trace, log "
    "scale): the substitutes' curve should follow the images'.",
    "Residual spectrum: how far each covariance is from the images' (|eigenvalues| of the "
    "difference); lower after correction is better.",
    "Centroid gap to the image mean over all rows, before (raw text) and after correction.",
    "Per-direction correction: along the text's top principal directions, the spread of the "
    "substitutes and of the images relative to the text's (1 = unchanged).",
)

_RELATIVE_TIE = 0.02


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None


def _judge(value: float, ref: float, better: str) -> str:
    """How ``value`` compares with ``ref`` for a metric whose good direction is ``better``."""
    if better == "0.5":
        a, b = abs(value - 0.5), abs(ref - 0.5)
        good, bad = "closer to the images (harder to tell apart)", "easier to tell from the images"
    elif better in ("lower", "higher"):
        a, b = (value, ref) if better == "lower" else (-value, -ref)
        good, bad = "better", "worse"
    else:
        return "for reference"
    if abs(a - b) <= _RELATIVE_TIE * max(abs(a), abs(b), 1e-12):
        return "about the same"
    return good if a < b else bad


def verdicts(content: Mapping[str, Any]) -> list[str]:
    """The report's opening sentences: the gates, then one per gate family against the baseline.

    E.g. ``"Distribution: domain accuracy 0.709 vs 0.759 for the centroid shift: closer to the
    images (harder to tell apart)."``; a family without a baseline figure says so.
    """
    gates = list(content.get("gates") or [])
    failed = [g["name"] for g in gates if not g.get("passed")]
    lines = [f"Gates: all {len(gates)} passed, so the run is publishable." if gates and not failed else
             f"Gates: {len(failed)} of {len(gates)} failed ({', '.join(failed)}): nothing is published."]
    drift = [g for g in gates if g.get("table") == "input_drift"]
    if drift:  # a frozen-model run: are the new inputs still what the model was fitted on?
        moved = [g for g in drift if not g.get("passed")]
        figures = "; ".join(f"{g['name'].split(':', 1)[-1].replace('_', ' ')} {format_value(g['observed'])} "
                            f"({g['bound']})" for g in (moved or drift))
        lines.append(f"Input drift: {len(moved)} of {len(drift)} figures past their bounds, the inputs moved away "
                     f"from the model's fit: {figures}." if moved else
                     f"Input drift: the inputs are within every bound of the model's fit: {figures}.")
    metrics = content.get("metrics") or {}
    baseline = (content.get("references") or {}).get(BASELINE) or {}
    for family, names in FAMILIES:
        parts = []
        for name, label in names:
            value, ref = _number(metrics.get(name)), _number(baseline.get(name))
            if value is None:
                continue
            if ref is None:
                parts.append(f"{label} {format_value(value)} (no centroid-shift figure)")
                continue
            better = METRICS[name].better if name in METRICS else ""
            parts.append(f"{label} {format_value(value)} vs {format_value(ref)} for the centroid shift: "
                         f"{_judge(value, ref, better)}")
        if parts:
            lines.append(f"{family}: " + "; ".join(parts) + ".")
    return lines
