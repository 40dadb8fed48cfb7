"""The run report: self-contained HTML with its plots inlined as SVG, report.json, run
identity, metric meanings and references, the copy beside the manifest, no credentials."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from aniso.quality.metric_info import format_value

from aniso.quality.gates import shard_table
from aniso.quality.report import (
    build_report,
    centroid_baseline,
    direction_ratios,
    publish_report,
    render_html,
    residual_spectrum,
    spectrum,
    write_report,
)
from aniso.quality.report_plots import COLORS, direction_plot, gap_plot, spectra_plot, svg_is_inline_safe


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


SVG = "{http://www.w3.org/2000/svg}"


def _svgs(page: str) -> list[ET.Element]:
    """Every inline <svg> of the page, parsed as XML (fails on a malformed one)."""
    blocks = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    return [ET.fromstring(b) for b in blocks]


def _check_page(page: str) -> list[ET.Element]:
    """The page is well-formed enough for a browser: one html/head/body, balanced tables, every
    image an inline SVG that parses, draws something, and references nothing outside the page."""
    from html.parser import HTMLParser

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.tags = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag in ("html", "head", "body", "table", "tr", "td", "th", "details", "pre", "div", "h1", "h2", "p"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if tag in ("html", "head", "body", "table", "tr", "td", "th", "details", "pre", "div", "h1", "h2", "p"):
                assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
                self.stack.pop()

    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and checker.tags.count("html") == 1 and checker.tags.count("body") == 1
    assert "<script" not in page and "<img" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    svgs = _svgs(page)
    for svg in svgs:
        assert svg.tag == f"{SVG}svg"
        assert svg.findall(f".//{SVG}path") or svg.findall(f".//{SVG}use"), "an empty plot"
    assert all(svg_is_inline_safe(b) for b in re.findall(r"<svg\b.*?</svg>", page, flags=re.S))
    return svgs


def test_direction_ratios_and_centroid_baseline(gap):
    ratios = direction_ratios(gap.text[:300], gap.text[:300], gap.image[:300], top=8)
    assert ratios["substitutes"] == pytest.approx([1.0] * 8)  # the identity changes no direction
    assert len(ratios["image"]) == 8 and all(r > 0 for r in ratios["image"])
    base = centroid_baseline(gap.text[:300], gap.image[:300])
    assert np.linalg.norm(base.mean(0) - (gap.image[:300] / np.linalg.norm(gap.image[:300], axis=1,
                                                                           keepdims=True)).mean(0)) < 0.05
    assert direction_ratios(None, None, None) == {}


def test_report_html_is_self_contained(gap, tmp_path):
    text, image = gap.text[:300], gap.image[:300]
    subs = image + 0.01  # any row-aligned set
    urls = write_report(str(tmp_path / "quality"), _gates(passed=False), _shards(), text=text, subs=subs,
                        image=image, title="aniso run abc")
    page = (tmp_path / "quality" / "report.html").read_text()
    assert urls["html"].endswith("report.html") and urls["json"].endswith("report.json")
    assert page.startswith("<!DOCTYPE html>") and "FAILED" in page
    svgs = _check_page(page)
    assert len(svgs) == 4
    # the plots are real charts: the spectra plot has a log axis with tick labels and a legend
    text_of = ["".join(t.itertext()) for t in svgs]
    assert "Covariance spectra" in text_of[0] and "substitutes" in text_of[0] and "1e-1.5" not in page
    # the gate table names the failed expectation with its observed value and bound
    row = re.search(r'<tr class="fail">(.*?)</tr>', page).group(1)
    assert "centroid_residual" in row and "0.3" in row and "&lt;= 0.001" in row and "gap left" in row
    content = json.loads((tmp_path / "quality" / "report.json").read_text())
    assert content["gap"] == {"before": 0.6, "after": 0.3}
    assert set(content["spectra"]) == {"text", "image", "substitutes"}
    assert all(len(v) == gap.text.shape[1] for v in content["spectra"].values())
    assert set(content["residual_spectrum"]) == {"before", "after"}


def test_report_opens_with_verdicts_against_the_baseline_and_captions_each_plot(gap, tmp_path):
    """One sentence per gate family against the centroid shift, before anything else; every plot
    in a figure with its caption."""
    text, image = gap.text[:300], gap.image[:300]
    gates = _gates(passed=True)
    gates["metrics"].update({"domain_acc": 0.709, "mmd2": 0.5, "knn_overlap@10": 0.8})
    base = {"domain_acc": 0.759, "mmd2": 0.02, "centroid_residual": 1e-5, "knn_overlap@10": 0.8}
    references = {"raw text": {"domain_acc": 0.99, "mmd2": 0.9}, "baseline (centroid shift)": base}
    write_report(str(tmp_path / "q"), gates, _shards(), text=text, subs=image + 0.01, image=image,
                 title="aniso run v", references=references)
    page = (tmp_path / "q" / "report.html").read_text()
    opening = re.search(r'<ul class="verdict">(.*?)</ul>', page).group(1)
    assert page.index('<ul class="verdict">') < page.index("<h2>")  # it opens the report
    items = re.findall(r"<li>(.*?)</li>", opening)
    assert items[0].startswith("Gates: all 2 passed")
    distribution = next(i for i in items if i.startswith("Distribution:"))
    assert f"domain accuracy 0.709 vs {format_value(base['domain_acc'])} for the centroid shift" in distribution
    assert "domain accuracy 0.709 vs 0.759 for the centroid shift: closer to the images" in distribution
    assert "MMD² 0.5 vs 0.02 for the centroid shift: worse" in distribution
    assert any(i.startswith("Centroid: centroid gap left 1.00e-05 vs 1.00e-05") and "about the same" in i for i in items), items
    assert any(i.startswith("Semantics: kNN overlap@10 0.8 vs 0.8") for i in items), items
    figures = re.findall(r"<figure><svg.*?</svg><figcaption>(.*?)</figcaption></figure>", page, re.S)
    assert len(figures) == 4 and all(len(c) > 40 for c in figures) and "Covariance spectra" in figures[0]


def test_report_without_image_sample():
    content = build_report(_gates(), _shards(), text=None, subs=None, image=None)
    assert content["spectra"]["image"] == [] and content["residual_spectrum"]["after"] == []
    page = render_html(content)
    assert "PASSED" in page and len(_check_page(page)) == 4 and "no data" in page


def test_report_from_a_gate_run_holds_no_secret(tmp_path, gap, monkeypatch):
    """A run over storage options carrying a secret writes no trace of it into quality/."""
    from test_gates import _store

    from aniso.config import GateSettings
    from aniso.methods import get_aligner
    from aniso.stages import apply as apply_stage
    from aniso.stages import gate as gate_stage

    secret = "SECRET-KEY-abc123-do-not-write"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    options: dict = {}  # the secret lives in the environment, as s3fs/boto read it
    base = tmp_path / "run"
    text = _store(str(base / "text.zarr"), gap.text[:600])
    image = _store(str(base / "image.zarr"), gap.image[:600], prefix="i")
    model = str(base / "model")
    get_aligner("realign").fit(gap.text[:600], gap.image[:600]).save(model)
    subs = str(base / "substitutes.zarr")
    for shard in apply_stage.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="zstd",
                                              storage_options=options):
        apply_stage.apply_shard(model, text, subs, shard, options)
    result = gate_stage.gate_run(model, text, subs, str(base / "quality"), GateSettings(), options,
                               image_store_url=image)
    assert result["passed"]
    for path in (base / "quality").iterdir():
        assert secret not in path.read_bytes().decode("utf-8", "replace"), path
    assert pd.read_parquet(base / "quality" / "shard_stats.parquet").shape[0] == 2


def test_report_has_identity_references_and_a_copy_beside_the_manifest(gap, tmp_path, monkeypatch):
    """run.json supplies the identity; the reference columns come from the same metric function
    applied to the raw text and the centroid baseline; publish_report adds the version."""
    from aniso.quality.diagnostics import centroid_residual

    run = tmp_path / "runs" / "k1"
    (run / "quality").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_key": "k1", "dataset": "coco", "method": "realign",
                                              "code_version": "0.1.0+abc", "config": {"method": {"name": "realign"}},
                                              "inputs": {"text": {"fingerprint": "f-text"}}}))
    text, image = gap.text[:300], gap.image[:300]
    calls = []

    def metric(s):
        calls.append(s.shape)
        return {"centroid_residual_sample": centroid_residual(s, image)}

    write_report(str(run / "quality"), _gates(), _shards(), text=text, subs=image, image=image,
                 reference_metrics=metric, identity_url=str(run / "run.json"))
    content = json.loads((run / "quality" / "report.json").read_text())
    assert len(calls) == 2 and set(content["references"]) == {"raw text", "baseline (centroid shift)"}
    raw = content["references"]["raw text"]["centroid_residual_sample"]
    base = content["references"]["baseline (centroid shift)"]["centroid_residual_sample"]
    assert raw > 0.5 and base < 0.1 * raw  # the planted gap, closed by the baseline
    assert content["identity"]["run_key"] == "k1"
    page = (run / "quality" / "report.html").read_text()
    for needle in ("coco", "realign", "k1", "0.1.0+abc", "f-text", "not published", "raw text", "baseline"):
        assert needle in page, needle
    import aniso.quality.report

    def no_drawing(content):
        raise AssertionError("publish_report drew the plots again")

    monkeypatch.setattr(aniso.quality.report, "render_plots", no_drawing)  # the run's drawn plots are reused
    url = publish_report(str(run / "quality"), str(tmp_path / "published" / "v1"), "v1", "coco")
    published = (tmp_path / "published" / "v1" / "report.html").read_text()
    assert url.endswith("published/v1/report.html") and "not published" not in published
    assert re.search(r"published version</td><td>v1<", published)
    _check_page(published)


# -- axes fitted to the data -------------------------------------------------------------------
def _vertices(d: str) -> list[tuple[float, float]]:
    """The vertices of an SVG path drawn with M, L, H, V, h, v and Z."""
    pts, x, y = [], 0.0, 0.0
    for cmd, args in re.findall(r"([MLHVhvZ])([^MLHVhvZ]*)", d):
        nums = [float(v) for v in args.replace(",", " ").split()]
        if cmd in "ML":
            x, y = nums
        elif cmd in "HV":
            x, y = (nums[0], y) if cmd == "H" else (x, nums[0])
        elif cmd in "hv":
            x, y = (x + nums[0], y) if cmd == "h" else (x, y + nums[0])
        else:
            continue
        pts.append((x, y))
    return pts


def _by_class(svg: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in svg.iter(f"{SVG}{tag}") if e.get("class") == cls]


def _axis(svg: ET.Element, axis: str, *, log: bool = False):
    """What the drawn axis says: its limits at the frame's edges (in decades on a log axis) and
    the value → pixel map, read off the tick marks and their labels (which must lie on one line)."""
    k = 0 if axis == "x" else 1
    ticks = []
    for g in _by_class(svg, "g", f"tick-{axis}"):
        value = float("".join(g.find(f"{SVG}text").itertext()))
        ticks.append((math.log10(value) if log else value, _vertices(g.find(f"{SVG}path").get("d"))[0][k]))
    assert len(ticks) >= 2, f"{axis} axis with {len(ticks)} ticks"
    (v1, p1), (v2, p2) = ticks[0], ticks[-1]
    slope = (p2 - p1) / (v2 - v1)
    for v, p in ticks:
        assert p == pytest.approx(p1 + (v - v1) * slope, abs=0.25), (axis, ticks)
    frame = [pt[k] for pt in _vertices(_by_class(svg, "path", "frame")[0].get("d"))]
    lims = sorted(v1 + (edge - p1) / slope for edge in (min(frame), max(frame)))

    def to_px(value: float) -> float:
        return p1 + ((math.log10(value) if log else value) - v1) * slope

    return lims, to_px


def _assert_fitted(lims: list[float], lo: float, hi: float, what: str) -> None:
    """The axis shows all of [lo, hi] and runs past it by at most 8 % of its range at either end."""
    span = (hi - lo) or 1.0
    assert lims[0] < lo and lims[1] > hi, (what, lims, lo, hi)
    assert lo - lims[0] <= 0.08 * span and lims[1] - hi <= 0.08 * span, (what, lims, lo, hi)


def _check_lines(svg: ET.Element, series: dict, *, log: bool, reference: float | None = None) -> None:
    """Both axes of a line chart fitted to its data, and every vertex where its value says."""
    shown = {name: [(i + 1, float(v)) for i, v in enumerate(values) if v is not None and (v > 0 or not log)]
             for name, values in series.items()}
    shown = {name: pts for name, pts in shown.items() if pts}
    xs = [x for pts in shown.values() for x, _ in pts]
    ys = [y for pts in shown.values() for _, y in pts] + ([reference] if reference is not None else [])
    (xlims, px), (ylims, py) = _axis(svg, "x"), _axis(svg, "y", log=log)
    _assert_fitted(xlims, min(xs), max(xs), "x")
    _assert_fitted(ylims, *((math.log10(min(ys)), math.log10(max(ys))) if log else (min(ys), max(ys))), "y")
    paths = {path.get("stroke"): path for path in _by_class(svg, "path", "series")}
    assert len(paths) == len(shown)
    for name, pts in shown.items():  # each series is drawn in its own colour
        drawn = _vertices(paths[COLORS[name.split(" ")[0]]].get("d"))
        assert [d[0] for d in drawn] == pytest.approx([px(x) for x, _ in pts], abs=0.1)
        assert [d[1] for d in drawn] == pytest.approx([py(y) for _, y in pts], abs=0.1)


def test_every_plot_fits_its_axes_to_the_data(gap, tmp_path):
    """Each axis of each plot spans its data's minimum to maximum with a small margin (no axis
    running on to the next round number or decade), and the tick labels say where the data is."""
    text, image = gap.text[:300], gap.image[:300]
    write_report(str(tmp_path / "q"), _gates(passed=False), _shards(), text=text, subs=0.5 * text + image,
                 image=image)
    content = json.loads((tmp_path / "q" / "report.json").read_text())
    spectra, residual, gap_svg, directions = _svgs((tmp_path / "q" / "report.html").read_text())
    _check_lines(spectra, content["spectra"], log=True)
    _check_lines(residual, content["residual_spectrum"], log=True)
    _check_lines(directions, {f"{k} / text": v for k, v in content["directions"].items()}, log=False, reference=1.0)
    for svg in (spectra, residual, directions):  # the legend sits where it hides no data point
        box = _by_class(svg, "rect", "legend")[0]
        x, y, w, h = (float(box.get(a)) for a in ("x", "y", "width", "height"))
        drawn = [p for path in _by_class(svg, "path", "series") for p in _vertices(path.get("d"))]
        assert not [p for p in drawn if x <= p[0] <= x + w and y <= p[1] <= y + h]
    # the bars start at 0 (a bar's length is its value) and the axis ends just past the longest
    (lo, hi), px = _axis(gap_svg, "x")
    values = [content["gap"]["before"], content["gap"]["after"]]
    assert lo == pytest.approx(0.0, abs=1e-3 * max(values))
    assert max(values) < hi <= 1.08 * max(values)
    ends = [max(x for x, _ in _vertices(bar.get("d"))) for bar in _by_class(gap_svg, "path", "bar")]
    assert ends == pytest.approx([px(v) for v in values], abs=0.1)


@pytest.mark.parametrize("values", [
    [0.2, 0.15, 0.12, 0.11],  # less than a decade: ticks at 1, 2, 5 (or every digit) × 10^k
    [0.5, 0.5, 0.5],  # flat
    [3e-3],  # one point
    list(np.logspace(0, -30, 40)),  # thirty decades: at most ~8 decade labels
])
def test_log_axes_fit_narrow_flat_and_wide_data(values):
    svg = ET.fromstring(spectra_plot({"spectra": {"text": values}}))
    if len(values) > 1:
        _assert_fitted(_axis(svg, "x")[0], 1, len(values), "x")
    if len(set(values)) > 1:
        _assert_fitted(_axis(svg, "y", log=True)[0], math.log10(min(values)), math.log10(max(values)), "y")
    assert 1 <= len(_by_class(svg, "g", "tick-x")) and 1 <= len(_by_class(svg, "g", "tick-y")) <= 9
    frame = _vertices(_by_class(svg, "path", "frame")[0].get("d"))
    drawn = _vertices(_by_class(svg, "path", "series")[0].get("d"))
    for k in (0, 1):  # every point inside the plot area, none on its edge
        lo, hi = min(p[k] for p in frame), max(p[k] for p in frame)
        assert all(lo < p[k] < hi for p in drawn), (k, lo, hi, drawn)


def test_linear_and_bar_axes_fit_data_far_from_round_numbers():
    """Ratios in [3.2, 3.3] (with the reference line at 1) and gaps of 0.0123 and 0.0119."""
    svg = ET.fromstring(direction_plot({"directions": {"substitutes": [3.3, 3.25, 3.2], "image": [3.21, 3.3]}}))
    _check_lines(svg, {"substitutes / text": [3.3, 3.25, 3.2], "image / text": [3.21, 3.3]}, log=False, reference=1.0)
    bars = ET.fromstring(gap_plot({"gap": {"before": 0.0123, "after": 0.0119}}))
    (lo, hi), _ = _axis(bars, "x")
    assert lo == pytest.approx(0.0, abs=1e-5) and 0.0123 < hi <= 1.08 * 0.0123
