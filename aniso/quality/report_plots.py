"""The run report's plots, written directly as inline SVG.

Each function takes the JSON-able content of :func:`aniso.quality.report.build_report` and returns one
``<svg>`` element (no XML prolog, no scripts, no external references), so the HTML stays a single
file. Four fixed charts (line charts on a log or linear axis, one bar chart) do not need a plotting
library: writing the markup takes milliseconds where matplotlib took about half a second a chart,
on the gate stage's critical path. Same content, same bytes.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["spectra_plot", "residual_plot", "gap_plot", "direction_plot", "svg_is_inline_safe"]

COLORS = {"text": "#1f77b4", "image": "#d62728", "substitutes": "#2ca02c", "before": "#1f77b4", "after": "#2ca02c",
          "baseline": "#9467bd"}
_GREY = "#7f7f7f"
_WIDTH, _HEIGHT = 520, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 66, 14, 30, 46


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, s: str, *, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" font-size="{size}"{extra}>'
            f"{html.escape(s)}</text>")


def _svg(height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif">'
            f'<rect width="{_WIDTH}" height="{height}" fill="#fff"/>'
            + _text(_WIDTH / 2, 18, title, size=13) + "".join(body) + "</svg>")


def _frame(x0: float, y0: float, x1: float, y1: float) -> str:
    return f'<path class="frame" d="M{_num(x0)} {_num(y0)}H{_num(x1)}V{_num(y1)}H{_num(x0)}Z" fill="none" stroke="#333" stroke-width="0.8"/>'


#: Share of the data's range left free beyond each end of an axis (the axes fit the data).
MARGIN = 0.04


def _nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart; at least 1 apart with ``integer``) covering [lo, hi]."""
    if not hi > lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    if integer:
        step = max(step, 1.0)
    first = math.floor(lo / step) * step
    return [round(first + k * step, 12) for k in range(int(math.ceil((hi - first) / step)) + 1)]


def _tick_label(v: float) -> str:
    return f"{v:g}"


def _fit(lo: float, hi: float, *, flat: float) -> tuple[float, float]:
    """Axis limits around data in [lo, hi]: :data:`MARGIN` of the range beyond each end (``flat``
    each side when all values are equal)."""
    pad = (hi - lo) * MARGIN if hi > lo else flat
    return lo - pad, hi + pad


def _inside(ticks: Sequence[float], lim: tuple[float, float]) -> list[float]:
    eps = (lim[1] - lim[0]) * 1e-9
    return [t for t in ticks if lim[0] - eps <= t <= lim[1] + eps]


def _log_ticks(lim: tuple[float, float]) -> list[tuple[float, str]]:
    """Ticks of a log axis with limits ``lim`` (in decades): ``(position in decades, label)``.

    Whole decades when at least two fall inside (at most ~8 labels), else 1, 2 and 5 (or every
    digit) times a power of ten, else round values of a linear scale.
    """
    lo, hi = lim
    decades = list(range(math.ceil(lo), math.floor(hi) + 1))
    if len(decades) >= 2:
        step = max(1, math.ceil((len(decades) - 1) / 7))
        return [(float(k), f"1e{k}") for k in decades[::step]]
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [(k + math.log10(m), f"{m}e{k}") for k in range(math.floor(lo), math.ceil(hi) + 1)
                 for m in mantissas if lo <= k + math.log10(m) <= hi]
        if len(ticks) >= 2:
            return ticks
    values = [v for v in _nice_ticks(10 ** lo, 10 ** hi) if v > 0]
    return [(math.log10(v), _tick_label(v)) for v in values if lo <= math.log10(v) <= hi]


class _Axes:
    """Data → pixel mapping of one plot area, with its tick marks, grid and labels.

    Both axes are fitted to the data: the limits are the data's minimum and maximum with
    :data:`MARGIN` of their range beyond each (in decades on a log axis), and the ticks are the
    round values inside them.
    """

    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, log_y: bool, height: int = _HEIGHT) -> None:
        self.x0, self.x1, self.y0, self.y1 = _LEFT, _WIDTH - _RIGHT, height - _BOTTOM, _TOP
        self.log_y = log_y
        self.xlim = _fit(min(xs), max(xs), flat=0.5)
        self.xticks = [(t, _tick_label(t)) for t in _inside(_nice_ticks(*self.xlim, integer=True), self.xlim)]
        if log_y:
            self.ylim = _fit(math.log10(min(ys)), math.log10(max(ys)), flat=0.5)
            self.yticks = _log_ticks(self.ylim)
        else:
            lo, hi = min(ys), max(ys)
            self.ylim = _fit(lo, hi, flat=abs(lo) * 0.1 or 0.5)
            self.yticks = [(t, _tick_label(t)) for t in _inside(_nice_ticks(*self.ylim), self.ylim)]

    def px(self, x: float) -> float:
        return self.x0 + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        return self._py_axis(math.log10(y) if self.log_y else y)

    def _py_axis(self, v: float) -> float:
        """Pixel row of a value in axis units (decades on a log axis)."""
        return self.y0 - (v - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (self.y0 - self.y1)

    def decorations(self, xlabel: str, ylabel: str) -> list[str]:
        out, grid = [], []
        for t, label in self.xticks:
            x = self.px(t)
            grid.append(f"M{_num(x)} {_num(self.y0)}V{_num(self.y1)}")
            out.append(_tick("x", x, self.y0, label))
        for t, label in self.yticks:
            y = self._py_axis(t)
            grid.append(f"M{_num(self.x0)} {_num(y)}H{_num(self.x1)}")
            out.append(_tick("y", self.x0, y, label))
        out.insert(0, f'<path d="{"".join(grid)}" stroke="#ddd" stroke-width="0.6" fill="none"/>')
        out.append(_frame(self.x0, self.y0, self.x1, self.y1))
        out.append(_text((self.x0 + self.x1) / 2, self.y0 + 34, xlabel))
        cy = (self.y0 + self.y1) / 2
        out.append(_text(16, cy, ylabel, extra=f' transform="rotate(-90 16 {_num(cy)})"'))
        return out


def _tick(axis: str, x: float, y: float, label: str) -> str:
    """One tick of the x (below the frame at column ``x``) or y axis (left of it at row ``y``):
    a mark and its label, grouped as ``<g class="tick-x|tick-y">``."""
    if axis == "x":
        return (f'<g class="tick-x"><path d="M{_num(x)} {_num(y)}v4" stroke="#333" stroke-width="0.8"/>'
                + _text(x, y + 15, label, size=10) + "</g>")
    return (f'<g class="tick-y"><path d="M{_num(x)} {_num(y)}h-4" stroke="#333" stroke-width="0.8"/>'
            + _text(x - 6, y + 3.5, label, anchor="end", size=10) + "</g>")


_LEGEND_WIDTH = 150


def _legend(names: Sequence[str], colors: Sequence[str], x_right: float, y_top: float) -> list[str]:
    # a white backing, in case a curve still runs under it (see _legend_corner)
    out = [f'<rect class="legend" x="{_num(x_right - _LEGEND_WIDTH - 4)}" y="{_num(y_top - 8)}" '
           f'width="{_LEGEND_WIDTH}" height="{14 * len(names) + 2}" fill="#fff" fill-opacity="0.85"/>']
    for k, (name, color) in enumerate(zip(names, colors)):
        y = y_top + 14 * k
        out.append(f'<path d="M{_num(x_right - _LEGEND_WIDTH)} {_num(y)}h18" stroke="{color}" stroke-width="2"/>')
        out.append(_text(x_right - _LEGEND_WIDTH + 24, y + 4, name, anchor="start", size=10))
    return out


def _legend_corner(axes: _Axes, count: int, pts: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(x_right, y_top)`` for :func:`_legend` in the corner of the plot area that covers the fewest
    drawn points (``pts`` in pixels): top right, top left, bottom right, bottom left on ties."""
    height = 14 * count + 2
    corners = [(axes.x1, axes.y1 + 12), (axes.x0 + _LEGEND_WIDTH + 8, axes.y1 + 12),
               (axes.x1, axes.y0 - height - 2), (axes.x0 + _LEGEND_WIDTH + 8, axes.y0 - height - 2)]

    def covered(corner: tuple[float, float]) -> int:
        left, top = corner[0] - _LEGEND_WIDTH - 8, corner[1] - 12
        return sum(left <= x <= corner[0] and top <= y <= top + height + 8 for x, y in pts)

    return min(corners, key=covered)


def _empty(title: str, what: str, height: int = _HEIGHT) -> str:
    body = [_frame(_LEFT, height - _BOTTOM, _WIDTH - _RIGHT, _TOP),
            _text((_LEFT + _WIDTH - _RIGHT) / 2, height / 2, f"no data ({what})", extra=' fill="#666"')]
    return _svg(height, body, title)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _lines(series: Mapping[str, Sequence[Any]], *, title: str, xlabel: str, ylabel: str, what: str,
           log_y: bool = True, markers: bool = False, reference: float | None = None) -> str:
    """A line chart of each series against its 1-based index (log y: non-positive points dropped)."""
    points: dict[str, list[tuple[int, float]]] = {}
    for name, values in series.items():
        pts = [(i + 1, f) for i, v in enumerate(values) if (f := _finite(v)) is not None and (f > 0 or not log_y)]
        if pts:
            points[name] = pts
    if not points:
        return _empty(title, what)
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts] + ([reference] if reference is not None else [])
    axes = _Axes(xs, ys, log_y=log_y)
    body = axes.decorations(xlabel, ylabel)
    if reference is not None:
        y = axes.py(reference)
        body.append(f'<path d="M{_num(axes.x0)} {_num(y)}H{_num(axes.x1)}" stroke="#999" stroke-dasharray="4 3"/>')
    colors, drawn = [], []
    for name, pts in points.items():
        color = COLORS.get(name.split(" ")[0], _GREY)
        colors.append(color)
        pixels = [(axes.px(x), axes.py(y)) for x, y in pts]
        drawn.extend(pixels)
        drawn.extend(((xa + xb) / 2, (ya + yb) / 2) for (xa, ya), (xb, yb) in zip(pixels, pixels[1:]))
        d = "".join(f"{'M' if k == 0 else 'L'}{_num(x)} {_num(y)}" for k, (x, y) in enumerate(pixels))
        body.append(f'<path class="series" d="{d}" fill="none" stroke="{color}" stroke-width="1.4"/>')
        if markers:
            body.extend(f'<circle cx="{_num(axes.px(x))}" cy="{_num(axes.py(y))}" r="2.2" fill="{color}"/>' for x, y in pts)
    body.extend(_legend(list(points), colors, *_legend_corner(axes, len(points), drawn)))
    return _svg(_HEIGHT, body, title)


def spectra_plot(content: Mapping[str, Any]) -> str:
    """Trace-normalised covariance spectra of text, substitutes and images (log scale)."""
    return _lines(content["spectra"], title="Covariance spectra (samples)", xlabel="eigenvalue rank",
                  ylabel="λ / tr Σ", what="samples too small")


def residual_plot(content: Mapping[str, Any]) -> str:
    """``|eig(Σ_image − Σ_text)|`` (before) and ``|eig(Σ_image − Σ_substitutes)|`` (after)."""
    return _lines(content["residual_spectrum"], title="Residual spectrum |eig(Σ_image − Σ)|", xlabel="rank",
                  ylabel="|λ|", what="no image sample")


def gap_plot(content: Mapping[str, Any]) -> str:
    """Centroid gap to the image mean before and after (all rows), as horizontal bars.

    The distance axis runs from 0 (where a bar's length starts) to the longest bar plus
    :data:`MARGIN` of it; a value label sits after its bar, or inside its end where the bar
    leaves no room.
    """
    height = 150
    gap = dict(content["gap"])
    title = "Centroid gap ‖mean − mean(image)‖ (all rows)"
    values = [max(_finite(v) or 0.0, 0.0) for v in gap.values()]
    vmax = max(values) if values and max(values) > 0 else 1.0
    x0, x1, y0, y1 = _LEFT, _WIDTH - _RIGHT, height - _BOTTOM, _TOP
    lim = (0.0, vmax * (1 + MARGIN))
    scale = (x1 - x0) / lim[1]
    ticks = [t for t in _inside(_nice_ticks(*lim), lim) if t >= 0]
    body = [f'<path d="{"".join(f"M{_num(x0 + t * scale)} {_num(y0)}V{_num(y1)}" for t in ticks)}" '
            f'stroke="#ddd" stroke-width="0.6" fill="none"/>', _frame(x0, y0, x1, y1)]
    band = (y0 - y1) / max(len(gap), 1)
    for k, (name, raw) in enumerate(gap.items()):
        top = y1 + band * (k + 0.15)
        width = values[k] * scale
        body.append(f'<path class="bar" d="M{_num(x0)} {_num(top)}h{_num(width)}v{_num(band * 0.7)}h{_num(-width)}Z" '
                    f'fill="{COLORS.get(name, _GREY)}"/>')
        body.append(_text(x0 - 5, top + band * 0.35 + 4, name, anchor="end", size=10))
        label = "n/a" if _finite(raw) is None else f"{float(raw):.3g}"
        if x0 + width + 8 + 6 * len(label) <= x1:
            body.append(_text(x0 + width + 4, top + band * 0.35 + 4, label, anchor="start", size=10))
        else:
            body.append(_text(x0 + width - 4, top + band * 0.35 + 4, label, anchor="end", size=10,
                              extra=' fill="#fff"'))
    body.extend(_tick("x", x0 + t * scale, y0, _tick_label(t)) for t in ticks)
    body.append(_text((x0 + x1) / 2, y0 + 32, "L2 distance"))
    return _svg(height, body, title)


def direction_plot(content: Mapping[str, Any]) -> str:
    """Per-direction correction: along the text sample's top principal directions, the standard
    deviation of the substitutes and of the images relative to the text's (1 = unchanged)."""
    dirs = content.get("directions") or {}
    series = {f"{k} / text": dirs.get(k) or [] for k in ("substitutes", "image")}
    return _lines({k: v for k, v in series.items() if v}, title="Per-direction correction applied",
                  xlabel="principal direction of the text sample (rank)", ylabel="std ratio",
                  what="no image or substitutes sample", log_y=False, markers=True, reference=1.0)


def svg_is_inline_safe(svg: str) -> bool:
    """No scripts and no external references (``href`` to anything but an in-document ``#id``)."""
    if re.search(r"<script|javascript:", svg, re.I):
        return False
    return all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', svg))
