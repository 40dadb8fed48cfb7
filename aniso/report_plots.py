"""The run report's plots, drawn with matplotlib (Agg, no display) and returned as inline SVG.

Each function takes the JSON-able content of :func:`aniso.report.build_report` and returns one
``<svg>`` element (no XML prolog, no external references), so the HTML stays a single file.
Text is kept as SVG text (``svg.fonttype = none``): small, selectable, rendered by the browser.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["spectra_plot", "residual_plot", "gap_plot", "direction_plot", "figure_svg", "preload"]

COLORS = {"text": "#1f77b4", "image": "#d62728", "substitutes": "#2ca02c", "before": "#1f77b4", "after": "#2ca02c",
          "baseline": "#9467bd"}
_SIZE = (5.2, 3.2)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                         "svg.hashsalt": "aniso"})  # deterministic ids: same content, same file
    return plt


def preload() -> None:
    """Import matplotlib and its Agg backend now (about a second), e.g. in a background thread."""
    _plt()


def figure_svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (closes the figure)."""
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):].strip()


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no data ({what})", ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def _positive(values: Sequence[float]) -> tuple[list[int], list[float]]:
    pts = [(i + 1, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(float(v)) and float(v) > 0]
    return [p[0] for p in pts], [p[1] for p in pts]


def _lines(series: Mapping[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str, what: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SIZE)
    drawn = 0
    for name, values in series.items():
        xs, ys = _positive(values)
        if xs:
            ax.plot(xs, ys, label=name, color=COLORS.get(name), linewidth=1.4)
            drawn += 1
    ax.set_title(title)
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(frameon=False)
    else:
        _empty(ax, what)
    return figure_svg(fig)


def spectra_plot(content: Mapping[str, Any]) -> str:
    """Trace-normalised covariance spectra of text, substitutes and images (log scale)."""
    return _lines(content["spectra"], title="Covariance spectra (samples)", xlabel="eigenvalue rank",
                  ylabel="λ / tr Σ", what="samples too small")


def residual_plot(content: Mapping[str, Any]) -> str:
    """``|eig(Σ_image − Σ_text)|`` (before) and ``|eig(Σ_image − Σ_substitutes)|`` (after)."""
    return _lines(content["residual_spectrum"], title="Residual spectrum |eig(Σ_image − Σ)|", xlabel="rank",
                  ylabel="|λ|", what="no image sample")


def gap_plot(content: Mapping[str, Any]) -> str:
    """Centroid gap to the image mean before and after (all rows), as horizontal bars."""
    plt = _plt()
    gap = {k: v for k, v in content["gap"].items()}
    fig, ax = plt.subplots(figsize=(_SIZE[0], 1.9))
    names = list(gap)
    values = [float(v) if v is not None and math.isfinite(float(v)) else 0.0 for v in gap.values()]
    ax.barh(names, values, color=[COLORS.get(n, "#7f7f7f") for n in names])
    vmax = max(values) if values and max(values) > 0 else 1.0
    for k, (name, raw) in enumerate(gap.items()):
        label = "n/a" if raw is None else f"{float(raw):.3g}"
        ax.text(values[k] + vmax * 0.02, k, label, va="center")
    ax.set_xlim(0, vmax * 1.25)
    ax.invert_yaxis()
    ax.set_title("Centroid gap ‖mean − mean(image)‖ (all rows)")
    ax.set_xlabel("L2 distance")
    return figure_svg(fig)


def direction_plot(content: Mapping[str, Any]) -> str:
    """Per-direction correction: along the text sample's top principal directions, the standard
    deviation of the substitutes and of the images relative to the text's (1 = unchanged)."""
    plt = _plt()
    dirs = content.get("directions") or {}
    fig, ax = plt.subplots(figsize=_SIZE)
    ratios = {k: dirs.get(k) or [] for k in ("substitutes", "image")}
    if not any(ratios.values()):
        _empty(ax, "no image or substitutes sample")
    else:
        for name, values in ratios.items():
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=2.5, linewidth=1.2,
                        label=f"{name} / text", color=COLORS.get(name))
        ax.axhline(1.0, color="#999", linewidth=0.8, linestyle="--")
        ax.set_xlabel("principal direction of the text sample (rank)")
        ax.set_ylabel("std ratio")
        ax.grid(True, alpha=0.3)
        ax.legend(frameon=False)
    ax.set_title("Per-direction correction applied")
    return figure_svg(fig)


def svg_is_inline_safe(svg: str) -> bool:
    """No scripts and no external references (``href`` to anything but an in-document ``#id``)."""
    if re.search(r"<script|javascript:", svg, re.I):
        return False
    return all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', svg))
