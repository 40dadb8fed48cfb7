"""The run report: self-contained HTML with inline SVG plots, report.json, no credentials."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from aniso.gates import shard_table
from aniso.report import build_report, render_html, residual_spectrum, spectrum, svg_bars, svg_lines, write_report


def _gates(passed=True):
    results = [
        {"name": "row_count", "observed": 200, "bound": "== 200", "passed": True, "table": "shard_stats"},
        {"name": "centroid_residual", "observed": 1e-5 if passed else 0.3, "bound": "<= 0.001", "passed": passed,
         "table": "run_metrics"},
    ]
    metrics = {"gap_before": 0.6, "centroid_residual": 1e-5 if passed else 0.3, "knn_overlap_10": 0.8,
               "spearman": 0.9, "mmd2": 0.01, "domain_acc": 0.7}
    return {"passed": passed, "results": results, "metrics": metrics}


def _shards():
    stats = [{"rows": 100, "nonfinite_rows": 0, "norm_min": 0.9999, "norm_max": 1.0001, "norm_mean": 1.0,
              "ids_unique": True}] * 2
    return shard_table(stats, [True, True])


def test_spectra_are_trace_normalised_and_descending(gap):
    w = np.array(spectrum(gap.text, top=1000))
    assert w.size == gap.text.shape[1]
    assert w.sum() == pytest.approx(1.0) and np.all(np.diff(w) <= 1e-15)
    assert spectrum(None) == [] and spectrum(gap.text[:1]) == []
    before = residual_spectrum(gap.text, gap.image)
    assert residual_spectrum(gap.image, gap.image) == pytest.approx([0.0] * len(before), abs=1e-12)
    assert before[0] > 0


def test_svg_plots_are_wellformed():
    svg = svg_lines({"text": [0.5, 0.2, 0.1], "image": [0.4, 0.3, 0.0, -1.0]}, title="a <b> & c")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert "a &lt;b&gt; &amp; c" in svg
    assert "no data" in svg_lines({"x": []}, title="empty")
    ET.fromstring(svg_bars({"before": 0.6, "after": None}, title="gap"))


def test_report_html_is_self_contained(gap, tmp_path):
    text, image = gap.text[:300], gap.image[:300]
    subs = image + 0.01  # any row-aligned set
    urls = write_report(str(tmp_path / "quality"), _gates(passed=False), _shards(), text=text, subs=subs,
                        image=image, title="aniso run abc")
    page = (tmp_path / "quality" / "report.html").read_text()
    assert urls["html"].endswith("report.html") and urls["json"].endswith("report.json")
    assert page.startswith("<!DOCTYPE html>") and "FAILED" in page
    assert page.count("<svg") == 3
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    # the gate table names the failed expectation with its observed value and bound
    row = re.search(r'<tr class="fail">(.*?)</tr>', page).group(1)
    assert "centroid_residual" in row and "0.3" in row and "&lt;= 0.001" in row
    content = json.loads((tmp_path / "quality" / "report.json").read_text())
    assert content["gap"] == {"before": 0.6, "after": 0.3}
    assert set(content["spectra"]) == {"text", "image", "substitutes"}
    assert all(len(v) == gap.text.shape[1] for v in content["spectra"].values())
    assert set(content["residual_spectrum"]) == {"before", "after"}


def test_report_without_image_sample():
    content = build_report(_gates(), _shards(), text=None, subs=None, image=None)
    assert content["spectra"]["image"] == [] and content["residual_spectrum"]["after"] == []
    page = render_html(content)
    assert "PASSED" in page and page.count("<svg") == 3


def test_report_from_a_gate_run_holds_no_secret(tmp_path, gap, monkeypatch):
    """A run over storage options carrying a secret writes no trace of it into quality/."""
    from test_gates import _store

    from aniso import pipeline
    from aniso.config import GateSettings
    from aniso.methods import get_aligner

    secret = "SECRET-KEY-abc123-do-not-write"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    options: dict = {}  # the secret lives in the environment, as s3fs/boto read it
    base = tmp_path / "run"
    text = _store(str(base / "text.zarr"), gap.text[:600])
    image = _store(str(base / "image.zarr"), gap.image[:600], prefix="i")
    model = str(base / "model")
    get_aligner("realign").fit(gap.text[:600], gap.image[:600]).save(model)
    subs = str(base / "substitutes.zarr")
    for shard in pipeline.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="zstd",
                                              storage_options=options):
        pipeline.apply_shard(model, text, subs, shard, options)
    result = pipeline.gate_run(model, text, subs, str(base / "quality"), GateSettings(), options,
                               image_store_url=image)
    assert result["passed"]
    for path in (base / "quality").iterdir():
        assert secret not in path.read_bytes().decode("utf-8", "replace"), path
    assert pd.read_parquet(base / "quality" / "shard_stats.parquet").shape[0] == 2
