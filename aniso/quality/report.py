"""The run report: one self-contained HTML file (inline SVG plots, no scripts) plus ``report.json``.

Written by :func:`aniso.stages.gate.gate_run` to ``runs/<key>/quality/`` and, once the run is
published, again beside the manifest (``published/<version>/report.html``, see
:func:`publish_report`). It holds:

* the run's identity (dataset, method, run key, version, settings, inputs, date, code version),
  read from ``runs/<key>/run.json``;
* every gate with its verdict, observed value and bound; every metric with its meaning
  (:mod:`aniso.quality.metric_info`) and reference values: the raw text and a fitted baseline (centroid
  shift), computed on the same samples;
* plots written as inline SVG (:mod:`aniso.quality.report_plots`) of the sample statistics
  (:mod:`aniso.quality.report_numbers`):

* covariance spectra (trace-normalised eigenvalues, log scale) of text, image and substitutes on
  the gate's samples;
* the residual spectrum: eigenvalue magnitudes of ``Σ_image − Σ_text`` (before) and
  ``Σ_image − Σ_substitutes`` (after), i.e. how much second-order gap is left;
* the centroid gap before/after (from the per-shard sums over *all* rows);
* the per-direction correction: along the text sample's top principal directions, the spread of
  substitutes and images relative to the text.

Nothing here reads storage options, so no credential can reach the report; the settings shown
are the semantic settings of ``run.json`` (no storage section).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aniso._fs import exists, join_url, open_url
from aniso.quality.metric_info import METRICS, format_value
from aniso.quality.report_numbers import (centroid_baseline, direction_ratios, reference_stand_ins, residual_spectrum,
                                          sample_content, spectrum)

__all__ = ["spectrum", "residual_spectrum", "direction_ratios", "centroid_baseline", "sample_content", "build_report",
           "reference_stand_ins", "render_plots", "render_html", "write_report", "publish_report", "read_identity"]

logger = logging.getLogger(__name__)

#: The drawn plots (a JSON list of ``<svg>`` strings) beside ``report.json``.
PLOTS_FILE = "report-plots.json"


# -- content --------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_report(
    gates: Mapping[str, Any],
    shards: pd.DataFrame,
    *,
    text: np.ndarray | None,
    subs: np.ndarray | None,
    image: np.ndarray | None,
    title: str = "aniso run",
    identity: Mapping[str, Any] | None = None,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    samples: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's content as JSON-able data (what ``report.json`` holds and the HTML renders).

    Parameters
    ----------
    identity
        Run identity (``run.json``: run key, method, params, config, inputs, code version).
    references
        Reference metrics by name (e.g. ``"raw text"``, ``"baseline (centroid shift)"``), each
        ``{metric: value}`` computed on the same samples as the run's metrics.
    samples
        :func:`sample_content` of ``text``, ``subs`` and ``image`` when computed already.
    """
    metrics = dict(gates.get("metrics", {}))
    samples = sample_content(text, subs, image) if samples is None else samples
    return {
        "title": title,
        "passed": bool(gates.get("passed")),
        "gates": [dict(r) for r in gates.get("results", [])],
        "gate_seconds": gates.get("seconds"),
        "metrics": metrics,
        "gap": {"before": metrics.get("gap_before"), "after": metrics.get("centroid_residual")},
        "spectra": samples["spectra"],
        "residual_spectrum": samples["residual_spectrum"],
        "directions": samples["directions"],
        "identity": _plain(dict(identity or {})),
        "references": {k: _plain(dict(v)) for k, v in (references or {}).items()},
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "shards": {
            "count": int(len(shards)),
            "rows": int(shards["rows"].sum()) if len(shards) else 0,
            "norm_min": float(shards["norm_min"].min()) if len(shards) else None,
            "norm_max": float(shards["norm_max"].max()) if len(shards) else None,
        },
    }


# -- HTML -----------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    return "–" if value is None else format_value(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], row_class: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_esc(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _identity_rows(content: Mapping[str, Any]) -> list[list[Any]]:
    ident = content.get("identity") or {}
    inputs = ident.get("inputs") or {}
    rows = [
        ["dataset", ident.get("dataset")],
        ["method", ident.get("method")],
        ["published version", ident.get("version") or "not published (yet)"],
        ["run key", ident.get("run_key")],
        ["code version", ident.get("code_version")],
        ["config hash", ident.get("config_hash")],
        ["embedding model", ident.get("embed_model")],
        *[[f"input: {name}", _input_cell(v)] for name, v in inputs.items()],
        ["report generated", content.get("generated")],
    ]
    return [r for r in rows if r[1] not in (None, "", {})]


def _input_cell(record: Any) -> Any:
    """An input's URL and fingerprint (``<url> (fingerprint <12 hex>)``), or what was recorded."""
    if not isinstance(record, Mapping):
        return record
    fingerprint = str(record.get("fingerprint") or "")
    if not record.get("url"):
        return fingerprint
    return f"{record['url']} (fingerprint {fingerprint[:12]})" if fingerprint else record["url"]


def _metric_rows(content: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    refs = content.get("references") or {}
    header = ["metric", "this run", *refs, "better", "meaning"]
    rows = []
    for name, value in sorted(content["metrics"].items()):
        info = METRICS.get(name)
        rows.append([name, value, *[r.get(name) for r in refs.values()], info.better if info else "",
                     info.meaning if info else ""])
    return header, rows


def render_plots(content: Mapping[str, Any]) -> list[str]:
    """The report's four plots as inline ``<svg>`` elements (milliseconds)."""
    from aniso.quality.report_plots import direction_plot, gap_plot, residual_plot, spectra_plot

    return [spectra_plot(content), residual_plot(content), gap_plot(content), direction_plot(content)]


def render_html(content: Mapping[str, Any], plots: list[str] | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no links out).

    ``plots``: the output of :func:`render_plots` for this content, when already drawn.
    """
    status = "PASSED" if content["passed"] else "FAILED"
    gates = content["gates"]
    gate_rows = [[g["name"], "pass" if g["passed"] else "FAIL", g["observed"], g["bound"], g.get("table", ""),
                  g.get("meaning") or (METRICS[g["name"]].meaning if g["name"] in METRICS else "")] for g in gates]
    metric_header, metric_rows = _metric_rows(content)
    plots = render_plots(content) if plots is None else plots
    from aniso.quality.report_verdict import PLOT_CAPTIONS, verdicts

    opening = "".join(f"<li>{_esc(line)}</li>" for line in verdicts(content))
    figures = "".join(f'<figure>{svg}<figcaption>{_esc(PLOT_CAPTIONS[k]) if k < len(PLOT_CAPTIONS) else ""}'
                      f"</figcaption></figure>" for k, svg in enumerate(plots))
    shards = content["shards"]
    ident = content.get("identity") or {}
    config = ident.get("config")
    stage_seconds = dict(ident.get("stage_seconds") or {})
    if content.get("gate_seconds") is not None:
        stage_seconds["gates"] = content["gate_seconds"]
    timings = ("<h2>Stage timings</h2>" + _table(["stage", "seconds"], [[k, v] for k, v in stage_seconds.items()])
               if stage_seconds else "")
    settings = (f"<details><summary>settings (semantic; these and the inputs define the run key)</summary>"
                f"<pre>{_esc(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre></details>") if config else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(content['title'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
h1 .PASSED {{ color: #2a7a2a; }} h1 .FAILED {{ color: #b22222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; vertical-align: top; }}
tr.fail td {{ background: #fde0e0; }}
.plots figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; max-width: 100%; }}
.plots svg {{ max-width: 100%; height: auto; }}
figcaption {{ font-size: 12px; color: #444; max-width: 560px; }}
ul.verdict li {{ margin: 0.2em 0; }}
pre {{ font-size: 12px; background: #f6f6f6; padding: 0.5em; }}
p.note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{_esc(content['title'])}: <span class="{status}">{status}</span></h1>
<ul class="verdict">{opening}</ul>
<p>{shards['count']} shards, {shards['rows']} substitute rows; norms in [{_esc(_fmt(shards['norm_min']))}, {_esc(_fmt(shards['norm_max']))}].</p>
<h2>Run</h2>
{_table(["", ""], _identity_rows(content))}
{settings}
{timings}
<h2>Gates</h2>
<p class="note">A run is published only when every gate passes; the bound is what the gate suite requires.</p>
{_table(["gate", "verdict", "observed", "bound", "table", "meaning"], gate_rows, ["" if g["passed"] else "fail" for g in gates])}
<h2>Plots</h2>
<div class="plots">{figures}</div>
<h2>Metrics</h2>
<p class="note">Semantic preservation (knn_overlap, spearman) is gated; distribution metrics (mmd2,
knn_precision/recall, domain_acc) are reported. The reference columns are computed on the same
samples: <b>raw text</b> is the text without correction, <b>baseline</b> shifts the text centroid onto
the image centroid. A method is useful where it beats the baseline on distribution metrics while keeping
semantic preservation close to the raw text's (1.0). docs/diagnostics.md explains every metric.</p>
{_table(metric_header, metric_rows)}
</body></html>
"""


def read_identity(run_json: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run identity from its ``run.json`` ({} when absent)."""
    try:
        if not exists(run_json, storage_options or {}):
            return {}
        with open_url(run_json, "r", storage_options or {}) as f:
            return json.load(f)
    except Exception as exc:  # noqa: BLE001 - the report is informational; never fail the gate on it
        logger.warning("run identity not read from %s: %s", run_json, exc)
        return {}


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
    reference_metrics: Callable[[np.ndarray], Mapping[str, Any]] | None = None,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    samples: Mapping[str, Any] | None = None,
    identity_url: str | None = None,
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` under ``quality_url``; returns their URLs.

    ``reference_metrics(s)`` computes the sample metrics for a stand-in ``s`` of the substitutes;
    it is called for each of :func:`reference_stand_ins` (the raw text and, with an image sample,
    the centroid baseline). ``references`` gives those metrics already computed instead, and
    ``samples`` the :func:`sample_content`. ``identity_url`` is the run's ``run.json``, whose
    identity (run key, method, settings, inputs) heads the report.
    """
    identity = read_identity(identity_url, storage_options) if identity_url else {}
    if references is None:
        references = {name: reference_metrics(ref) for name, ref in reference_stand_ins(text, image).items()} \
            if reference_metrics is not None else {}
    references = {name: dict(values) for name, values in references.items()}
    if "raw text" in references:
        references["raw text"] = {"centroid_residual": gates.get("metrics", {}).get("gap_before"),
                                  **references["raw text"]}
    content = build_report(gates, shards, text=text, subs=subs, image=image, title=title, identity=identity,
                           references=references, samples=samples)
    urls = {"html": join_url(quality_url, "report.html"), "json": join_url(quality_url, "report.json")}
    with open_url(urls["json"], "w", storage_options or {}) as f:
        json.dump(content, f, indent=2, sort_keys=True, default=str)
    plots = render_plots(content)
    # kept for publish_report: the published page differs only in its identity, not in its plots
    with open_url(join_url(quality_url, PLOTS_FILE), "w", storage_options or {}) as f:
        json.dump(plots, f)
    with open_url(urls["html"], "w", storage_options or {}) as f:
        f.write(render_html(content, plots))
    logger.info("report written to %s", urls["html"])
    return urls


def publish_report(quality_url: str, version_url: str, version: str, dataset: str,
                   storage_options: dict[str, Any] | None = None) -> str:
    """Render the run's report again with its published version and write it beside the
    manifest (``<version_url>/report.html``); returns its URL."""
    with open_url(join_url(quality_url, "report.json"), "r", storage_options or {}) as f:
        content = json.load(f)
    try:
        with open_url(join_url(quality_url, PLOTS_FILE), "r", storage_options or {}) as f:
            plots = json.load(f)
    except FileNotFoundError:  # a run reported by an older aniso: draw them again
        plots = None
    content["identity"] = {**content.get("identity", {}), "version": version, "dataset": dataset}
    content["title"] = f"aniso {dataset} {version}"
    url = join_url(version_url, "report.html")  # publish.REPORT_PATH
    with open_url(url, "w", storage_options or {}) as f:
        f.write(render_html(content, plots))
    logger.info("report published to %s", url)
    return url
