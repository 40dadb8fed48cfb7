"""The run report: one self-contained HTML file (inline SVG plots, no scripts) plus ``report.json``.

Written by :func:`aniso.pipeline.gate_run` to ``runs/<key>/quality/``:

* covariance spectra (trace-normalised eigenvalues, log scale) of text, image and substitutes on
  the gate's samples;
* the residual spectrum: eigenvalue magnitudes of ``Σ_image − Σ_text`` (before) and
  ``Σ_image − Σ_substitutes`` (after), i.e. how much second-order gap is left;
* the centroid gap before/after (from the per-shard sums over *all* rows);
* the metric table and the gate table (observed value, bound, pass/fail).

Nothing here reads storage options or settings, so no credential can reach the report.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._fs import join_url, open_url

__all__ = ["spectrum", "residual_spectrum", "build_report", "render_html", "write_report", "svg_lines", "svg_bars"]

logger = logging.getLogger(__name__)

#: How many leading eigenvalues the plots and report.json keep.
TOP_EIGEN = 128

_COLORS = {"text": "#1f77b4", "image": "#d62728", "substitutes": "#2ca02c", "before": "#1f77b4", "after": "#2ca02c"}


# -- numbers --------------------------------------------------------------------------------
def _factor(x: np.ndarray) -> np.ndarray:
    """``F`` (n × d) with ``Σ = FᵀF``: the centred, L2-normalised rows over ``sqrt(n)``.

    The spectra are computed from ``F`` through whichever of ``FFᵀ`` (n × n) and ``FᵀF`` (d × d)
    is smaller, so the report's cost is bounded by the sample size, not by d.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    return (x - x.mean(axis=0)) / np.sqrt(x.shape[0])


def _cov(x: np.ndarray) -> np.ndarray:
    f = _factor(x)
    return f.T @ f


def _usable(x: np.ndarray | None) -> bool:
    return x is not None and x.ndim == 2 and x.shape[0] >= 2 and bool(np.isfinite(x).all())


def spectrum(x: np.ndarray | None, top: int = TOP_EIGEN, *, cov: np.ndarray | None = None,
             factor: np.ndarray | None = None) -> list[float]:
    """Trace-normalised covariance eigenvalues (descending) of the L2-normalised rows of ``x``."""
    if cov is None and factor is None:
        if not _usable(x):
            return []
        factor = _factor(x)
    if cov is None:
        assert factor is not None
        gram = factor @ factor.T if factor.shape[0] < factor.shape[1] else factor.T @ factor
        w = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
    else:
        w = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    total = float(w.sum())
    return [] if total <= 0 else (w[:top] / total).tolist()


def residual_spectrum(
    a: np.ndarray | None, b: np.ndarray | None, top: int = TOP_EIGEN, *,
    cov_a: np.ndarray | None = None, cov_b: np.ndarray | None = None,
    factor_a: np.ndarray | None = None, factor_b: np.ndarray | None = None,
) -> list[float]:
    """Sorted ``|eig(Σ_b − Σ_a)|`` (descending): the second-order gap between two sets.

    From factors (``Σ = FᵀF``) with ``m = n_a + n_b < d``: ``Σ_b − Σ_a = Zᵀ S Z`` with
    ``Z = [F_b; F_a]`` and ``S = diag(+1, −1)``. With ``ZZᵀ = VΛVᵀ`` (so ``Zᵀ = UΛ^½Vᵀ``), its
    non-zero eigenvalues are those of the m × m matrix ``Λ^½ VᵀSV Λ^½``: one Gram product and two
    m × m eigen-decompositions (cost O(d m² + m³), not O(d³)).
    """
    if cov_a is None and cov_b is None and (factor_a is not None or _usable(a)) and (factor_b is not None or _usable(b)):
        fa = factor_a if factor_a is not None else _factor(a)
        fb = factor_b if factor_b is not None else _factor(b)
        m, d = fa.shape[0] + fb.shape[0], fa.shape[1]
        if m < d:
            z = np.concatenate([fb, fa])
            lam, v = np.linalg.eigh(z @ z.T)
            root = np.sqrt(np.clip(lam, 0.0, None))
            signs = np.r_[np.ones(fb.shape[0]), -np.ones(fa.shape[0])]
            inner = (v.T * signs) @ v
            w = np.sort(np.abs(np.linalg.eigvalsh(root[:, None] * inner * root[None, :])))[::-1]
            return w[:top].tolist()
        cov_a, cov_b = fa.T @ fa, fb.T @ fb
    if cov_a is None:
        cov_a = _cov(a) if _usable(a) else None
    if cov_b is None:
        cov_b = _cov(b) if _usable(b) else None
    if cov_a is None or cov_b is None:
        return []
    w = np.sort(np.abs(np.linalg.eigvalsh(cov_b - cov_a)))[::-1]
    return w[:top].tolist()


def build_report(
    gates: Mapping[str, Any],
    shards: pd.DataFrame,
    *,
    text: np.ndarray | None,
    subs: np.ndarray | None,
    image: np.ndarray | None,
    title: str = "aniso run",
) -> dict[str, Any]:
    """The report's content as JSON-able data (what ``report.json`` holds and the HTML renders)."""
    metrics = dict(gates.get("metrics", {}))
    # factors, not d × d covariances: the cost is bounded by the sample sizes (d may be 8192)
    fac = {name: _factor(x) if _usable(x) else None for name, x in (("text", text), ("image", image), ("substitutes", subs))}
    spectra = {name: [] if f is None else spectrum(None, factor=f) for name, f in fac.items()}
    residual = {
        "before": [] if fac["text"] is None or fac["image"] is None else
        residual_spectrum(None, None, factor_a=fac["text"], factor_b=fac["image"]),
        "after": [] if fac["substitutes"] is None or fac["image"] is None else
        residual_spectrum(None, None, factor_a=fac["substitutes"], factor_b=fac["image"]),
    }
    return {
        "title": title,
        "passed": bool(gates.get("passed")),
        "gates": [dict(r) for r in gates.get("results", [])],
        "metrics": metrics,
        "gap": {"before": metrics.get("gap_before"), "after": metrics.get("centroid_residual")},
        "spectra": spectra,
        "residual_spectrum": residual,
        "shards": {
            "count": int(len(shards)),
            "rows": int(shards["rows"].sum()) if len(shards) else 0,
            "norm_min": float(shards["norm_min"].min()) if len(shards) else None,
            "norm_max": float(shards["norm_max"].max()) if len(shards) else None,
        },
    }


# -- SVG ------------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def svg_lines(
    series: Mapping[str, Sequence[float]], *, title: str, log_y: bool = True, width: int = 520, height: int = 300,
    x_label: str = "index", y_label: str = "value",
) -> str:
    """A line chart as an inline ``<svg>`` (log-scale y by default; non-positive values dropped)."""
    left, right, top, bottom = 62, 120, 28, 40
    pw, ph = width - left - right, height - top - bottom
    clean = {}
    for name, values in series.items():
        pts = [(i + 1, float(v)) for i, v in enumerate(values) if math.isfinite(float(v)) and (float(v) > 0 or not log_y)]
        if pts:
            clean[name] = pts
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    if not clean:
        parts.append(f'<text x="{left + pw / 2:.0f}" y="{top + ph / 2:.0f}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    xmax = max(p[0] for pts in clean.values() for p in pts)
    ys = [p[1] for pts in clean.values() for p in pts]
    tf = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    lo, hi = tf(min(ys)), tf(max(ys))
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1

    def px(i: float) -> float:
        return left + (i - 1) / max(xmax - 1, 1) * pw

    def py(v: float) -> float:
        return top + ph - (tf(v) - lo) / (hi - lo) * ph

    for k in range(5):  # y ticks
        val = lo + (hi - lo) * k / 4
        y = top + ph - ph * k / 4
        label = f"1e{val:.1f}" if log_y else f"{val:.3g}"
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#999"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" >1</text>'
                 f'<text x="{left + pw}" y="{height - 8}" text-anchor="end">{xmax}</text>'
                 f'<text x="{left + pw / 2:.0f}" y="{height - 8}" text-anchor="middle">{_esc(x_label)}</text>'
                 f'<text x="14" y="{top + ph / 2:.0f}" transform="rotate(-90 14 {top + ph / 2:.0f})" '
                 f'text-anchor="middle">{_esc(y_label)}</text>')
    for n, (name, pts) in enumerate(clean.items()):
        color = _COLORS.get(name, ["#9467bd", "#8c564b", "#e377c2"][n % 3])
        path = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        ly = top + 14 + 16 * n
        parts.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 28}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"/><text x="{left + pw + 32}" y="{ly}">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(values: Mapping[str, float | None], *, title: str, width: int = 360, height: int = 240) -> str:
    """A bar chart as an inline ``<svg>`` (missing values shown as "n/a")."""
    left, top, bottom = 40, 28, 40
    pw, ph = width - left - 20, height - top - bottom
    finite = [float(v) for v in values.values() if v is not None and math.isfinite(float(v))]
    vmax = max(finite) if finite and max(finite) > 0 else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>']
    n = max(len(values), 1)
    slot = pw / n
    for k, (name, v) in enumerate(values.items()):
        x = left + k * slot + slot * 0.2
        bw = slot * 0.6
        color = _COLORS.get(name, "#7f7f7f")
        ok = v is not None and math.isfinite(float(v))
        h = 0.0 if not ok else max(float(v), 0.0) / vmax * ph
        parts.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{color}"/>')
        label = f"{float(v):.3g}" if ok else "n/a"
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - h - 4:.1f}" text-anchor="middle">{label}</text>'
                     f'<text x="{x + bw / 2:.1f}" y="{top + ph + 16:.1f}" text-anchor="middle">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- HTML -----------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], row_class: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_esc(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(content: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no links out)."""
    status = "PASSED" if content["passed"] else "FAILED"
    gates = content["gates"]
    gate_rows = [[g["name"], g.get("table", ""), g["observed"], g["bound"], "pass" if g["passed"] else "FAIL"] for g in gates]
    metric_rows = [[k, v] for k, v in sorted(content["metrics"].items())]
    spectra = content["spectra"]
    residual = content["residual_spectrum"]
    plots = [
        svg_lines(spectra, title="Covariance spectra (sample, trace-normalised)", x_label="eigenvalue rank",
                  y_label="λ / tr Σ"),
        svg_lines(residual, title="Residual spectrum |eig(Σ_image − Σ_·)|", x_label="rank", y_label="|λ|"),
        svg_bars(content["gap"], title="Centroid gap to the image mean (all rows)"),
    ]
    shards = content["shards"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(content['title'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
h1 .PASSED {{ color: #2a7a2a; }} h1 .FAILED {{ color: #b22222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }}
tr.fail td {{ background: #fde0e0; }}
.plots svg {{ margin: 0 1em 1em 0; vertical-align: top; }}
</style></head><body>
<h1>{_esc(content['title'])}: <span class="{status}">{status}</span></h1>
<p>{shards['count']} shards, {shards['rows']} substitute rows; norms in [{_esc(_fmt(shards['norm_min']))}, {_esc(_fmt(shards['norm_max']))}].</p>
<h2>Gates</h2>
{_table(["gate", "table", "observed", "bound", "result"], gate_rows, ["" if g["passed"] else "fail" for g in gates])}
<h2>Plots</h2>
<div class="plots">{"".join(plots)}</div>
<h2>Metrics</h2>
<p>Semantic preservation and distribution compatibility are computed on deterministic samples;
distribution metrics (mmd2, knn_precision/recall, domain_acc) are reported, not gated.</p>
{_table(["metric", "value"], metric_rows)}
</body></html>
"""


def write_report(
    quality_url: str,
    gates: Mapping[str, Any],
    shards: pd.DataFrame,
    *,
    text: np.ndarray | None,
    subs: np.ndarray | None,
    image: np.ndarray | None,
    storage_options: dict[str, Any] | None = None,
    title: str = "aniso run",
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` under ``quality_url``; returns their URLs."""
    content = build_report(gates, shards, text=text, subs=subs, image=image, title=title)
    urls = {"html": join_url(quality_url, "report.html"), "json": join_url(quality_url, "report.json")}
    with open_url(urls["json"], "w", storage_options or {}) as f:
        json.dump(content, f, indent=2, sort_keys=True, default=str)
    with open_url(urls["html"], "w", storage_options or {}) as f:
        f.write(render_html(content))
    logger.info("report written to %s", urls["html"])
    return urls
