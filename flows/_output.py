"""Result text of the ``aniso`` commands (stdout): the run result, ``show`` and ``diagnose``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Any

from aniso.quality.metric_info import describe, format_value

__all__ = ["result_lines", "show_summary", "diagnose_output", "DIAGNOSE_FORMATS"]

DIAGNOSE_FORMATS = ("table", "markdown", "json", "csv")


def _report_url(result: Mapping[str, Any]) -> str | None:
    report = (result.get("gates") or {}).get("report") or {}
    return report.get("html")


def result_lines(result: Mapping[str, Any], root: str, dataset: str) -> list[str]:
    """What ``produce``/``demo`` print once published: version, where things are, each gate."""
    pointer = result["published"]
    lines = [f"published {dataset} version {pointer['version']} (run {result['run_key']})",
             f"  root:     {root}",
             f"  manifest: {root.rstrip('/')}/{dataset}/{pointer['manifest']}"]
    report = (result.get("published") or {}).get("report") or _report_url(result)
    if report:
        lines.append(f"  report:   {report}")
    for gate in result["gates"]["results"]:
        lines.append(f"  gate {gate['name']:<20} {'PASS' if gate['passed'] else 'FAIL'}  "
                     f"observed {format_value(gate['observed'])}  (required {gate['bound']})")
    return lines


def show_summary(manifest: Mapping[str, Any], root: str, dataset: str, report: str | None = None) -> list[str]:
    """A short human summary of a published manifest (``aniso show``)."""
    lineage = manifest.get("lineage") or {}
    gates = manifest.get("gates") or {}
    results = gates.get("results", [])
    embedding = (manifest.get("arrays") or {}).get("embedding") or {}
    base = f"{root.rstrip('/')}/{dataset}"
    lines = [
        f"{dataset} version {manifest.get('version', '?')} (run {manifest.get('run_key', '?')})",
        f"  rows:      {manifest.get('n_rows', '?')} x {manifest.get('dim', '?')} {embedding.get('dtype', '')}".rstrip()
        + (f", {manifest['valid_rows']} valid" if manifest.get("valid_rows") not in (None, manifest.get("n_rows")) else ""),
        f"  method:    {lineage.get('method', '?')} (code {lineage.get('code_version', '?')})",
    ]
    if manifest.get("created"):
        lines.append(f"  published: {manifest['created']}")
    if results:
        failed = [r["name"] for r in results if not r.get("passed")]
        lines.append(f"  gates:     {len(results) - len(failed)}/{len(results)} passed"
                     + (f" (failed: {', '.join(failed)})" if failed else ""))
    version_dir = f"{base}/published/{manifest.get('version', '?')}"
    if manifest.get("path"):  # relative to the version's folder (older manifests: to the dataset)
        path = manifest["path"]
        lines.append(f"  data:      {base if path.startswith('runs/') else version_dir}/{path}")
    lines.append(f"  manifest:  {version_dir}/manifest.json")
    report = report or (gates.get("report") or {}).get("html")
    if report:
        lines.append(f"  report:    {report}")
    lines.append("  (--json prints the full manifest)")
    return lines


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format_value(float(value), digits=3) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def diagnose_output(rows: Mapping[str, Mapping[str, float]], fmt: str = "table", width: int = 100) -> str:
    """Diagnostics of one or more inputs in ``fmt``.

    ``table`` (the default) is one line per metric with a column per input and the metric's
    meaning, cut to ``width`` columns; ``markdown`` is the wide table (one row per input),
    ``json`` the raw numbers, ``csv`` one row per (input, metric).
    """
    from aniso.quality.diagnostics import METRIC_ORDER, format_table

    if fmt == "markdown":
        return format_table({k: dict(v) for k, v in rows.items()})
    if fmt == "json":
        return json.dumps({k: dict(v) for k, v in rows.items()}, indent=2, default=float)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", "metric", "value"])
        for name, values in rows.items():
            for metric, value in values.items():
                writer.writerow([name, metric, value])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(DIAGNOSE_FORMATS)}")
    metrics = [m for m in METRIC_ORDER if any(m in r for r in rows.values())]
    for r in rows.values():
        metrics += [m for m in r if m not in metrics]
    names = list(rows)
    mw = max(len("metric"), *(len(m) for m in metrics)) if metrics else 6
    cw = [max(len(n), 9) for n in names]
    header = f"{'metric':<{mw}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cw)) + "  meaning"
    lines = [header, "-" * min(width, len(header) + 20)]
    for m in metrics:
        line = f"{m:<{mw}}  " + "  ".join(f"{_cell(rows[n].get(m)):>{w}}" for n, w in zip(names, cw)) + "  "
        meaning = describe(m)
        room = width - len(line)
        if room > 8 and meaning:
            line += meaning if len(meaning) <= room else meaning[: room - 1] + "…"
        lines.append(line.rstrip())
    return "\n".join(lines)
