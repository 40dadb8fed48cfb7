"""Quality gates with great-expectations (for real): passing runs pass, each check can fail, and a
failure names the expectation with its observed value and bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aniso import gate_stage, pipeline
from aniso.config import GateSettings, load_settings
from aniso.errors import ConfigError
from aniso.gates import evaluate_gates, load_suites, shard_table
from aniso.methods import get_aligner
from aniso.store import EmbeddingStore

GATE_NAMES = ["row_count", "ids_match_input", "ids_unique", "no_nan_inf", "unit_norm",
              "centroid_residual", "knn_overlap@10", "pairwise_spearman"]


# -- a real run's stores --------------------------------------------------------------------
def _store(url, array, shard_rows=512, chunk_rows=256, prefix="r"):
    store = EmbeddingStore.create(url, n_rows=array.shape[0], dim=array.shape[1], chunk_rows=chunk_rows,
                                  shard_rows=shard_rows)
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        store.write_shard(shard, array[start:stop], [f"{prefix}{i}" for i in range(start, stop)])
    return url


@pytest.fixture
def run_urls(tmp_path, gap):
    """Text and image stores, a fitted ``realign`` model and its applied substitutes."""
    base = tmp_path / "run"
    text = _store(str(base / "text.zarr"), gap.text)
    image = _store(str(base / "image.zarr"), gap.image, prefix="i")
    model = str(base / "model")
    get_aligner("realign").fit(gap.text, gap.image).save(model)
    subs = str(base / "substitutes.zarr")
    for shard in pipeline.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="zstd",
                                              storage_options={}):
        pipeline.apply_shard(model, text, subs, shard, {})
    return {"model": model, "text": text, "image": image, "subs": subs, "quality": str(base / "quality")}


def _gate(urls, settings=None, image=True):
    return gate_stage.gate_run(urls["model"], urls["text"], urls["subs"], urls["quality"], settings or GateSettings(),
                             {}, image_store_url=urls["image"] if image else None)


def test_passing_run_passes_and_writes_results(run_urls, tmp_path):
    result = _gate(run_urls)
    assert result["passed"], result
    assert [r["name"] for r in result["results"]] == GATE_NAMES
    for r in result["results"]:
        assert {"name", "observed", "bound", "passed"} <= set(r)
    on_disk = json.loads((tmp_path / "run" / "quality" / "gates.json").read_text())
    assert on_disk["passed"] and on_disk["results"] == result["results"]
    metrics = result["metrics"]
    assert metrics["gap_before"] > 0.1 > metrics["centroid_residual"]
    # distribution compatibility is reported, not gated
    for name in ("mmd2", "knn_precision", "knn_recall", "domain_acc"):
        assert math.isfinite(metrics[name])
        assert name not in {r["name"] for r in result["results"]}
    assert (tmp_path / "run" / "quality" / "shard_stats.parquet").exists()
    assert (tmp_path / "run" / "quality" / "report.html").exists()


def test_gate_run_is_deterministic(run_urls):
    first = _gate(run_urls, image=False)
    second = _gate(run_urls, image=False)
    assert first["results"] == second["results"]
    assert "mmd2" not in first["metrics"]  # no image store: nothing to compare against


def test_forced_failure_names_expectation_observed_and_bound(run_urls):
    result = _gate(run_urls, GateSettings(centroid_residual_max=1e-12, report=False))
    assert not result["passed"]
    [failed] = [r for r in result["results"] if not r["passed"]]
    assert failed["name"] == "centroid_residual"
    assert failed["bound"] == "<= 1e-12"
    assert failed["observed"] == pytest.approx(result["metrics"]["centroid_residual"]) and failed["observed"] > 1e-12


def test_nan_substitutes_fail_no_nan_inf(run_urls):
    """Real damaged output: a shard with NaN rows written with its apply-time stats."""
    subs = EmbeddingStore.open(run_urls["subs"], mode="r+")
    emb, ids, _ = subs.read_shard(1)
    emb = emb.copy()
    emb[[3, 7]] = np.nan
    subs.write_shard(1, emb, list(ids), stats=pipeline.shard_quality(emb, list(ids)))
    result = _gate(run_urls, GateSettings(report=False))
    failed = {r["name"]: r for r in result["results"] if not r["passed"]}
    assert failed["no_nan_inf"]["observed"] == 2 and failed["no_nan_inf"]["bound"] == "== 0"
    # the sample (here all 2000 rows) holds the NaN rows: the semantic metrics cannot be
    # computed, and they fail rather than pass vacuously
    assert failed["knn_overlap@10"]["observed"] in (None, "nan")
    assert failed["pairwise_spearman"]["observed"] in (None, "nan")
    assert "row_count" not in failed and "ids_match_input" not in failed


def test_bounds_come_from_settings_and_environment(run_urls):
    settings = load_settings(environ={"ANISO_GATES__KNN_OVERLAP_MIN": "0.999", "ANISO_GATES__REPORT": "false"})
    result = _gate(run_urls, settings.gates)
    failed = {r["name"]: r for r in result["results"] if not r["passed"]}
    assert set(failed) == {"knn_overlap@10"}
    assert failed["knn_overlap@10"]["bound"] == ">= 0.999"
    assert failed["knn_overlap@10"]["observed"] < 0.999


# -- each check can fail, on the tables directly --------------------------------------------
@pytest.fixture(scope="module")
def suites():
    return load_suites()


def _good_tables():
    stats = [{"rows": 100, "nonfinite_rows": 0, "norm_min": 1 - 1e-7, "norm_max": 1 + 1e-7, "norm_mean": 1.0,
              "ids_unique": True} for _ in range(3)]
    metrics = {"rows": 300, "centroid_residual": 1e-5, "gap_before": 0.4, "knn_overlap_10": 0.8, "spearman": 0.9}
    return stats, [True, True, True], metrics


def _evaluate(suites, stats, ids_match, metrics, expected_rows=300, **bounds):
    return evaluate_gates(shard_table(stats, ids_match), metrics, expected_rows=expected_rows,
                          settings=GateSettings(**bounds), suites=suites)


def test_good_tables_pass(suites):
    report = _evaluate(suites, *_good_tables())
    assert report.passed, report.summary()
    assert [r.name for r in report.results] == GATE_NAMES


def _break(case, stats, ids_match, metrics):
    if case == "row_count":
        return {"expected_rows": 301}
    if case == "ids_match_input":
        ids_match[1] = False
    elif case == "ids_unique":
        stats[2]["ids_unique"] = False
    elif case == "no_nan_inf":
        stats[0]["nonfinite_rows"] = 4
    elif case == "unit_norm":
        stats[1]["norm_max"] = 1.05
    elif case == "centroid_residual":
        metrics["centroid_residual"] = 0.2
    elif case == "knn_overlap@10":
        metrics["knn_overlap_10"] = 0.1
    elif case == "pairwise_spearman":
        metrics["spearman"] = float("nan")  # could not be computed: must fail, not pass
    return {}


EXPECTED = {
    "row_count": (300, "== 301"),
    "ids_match_input": (0, ">= 1"),
    "ids_unique": (0, ">= 1"),
    "no_nan_inf": (4, "== 0"),
    "unit_norm": (pytest.approx(0.05), "<= 0.001"),
    "centroid_residual": (0.2, "<= 0.001"),
    "knn_overlap@10": (0.1, ">= 0.3"),
    "pairwise_spearman": (None, ">= 0.5"),
}


@pytest.mark.parametrize("case", GATE_NAMES)
def test_each_check_can_fail(suites, case):
    stats, ids_match, metrics = _good_tables()
    extra = _break(case, stats, ids_match, metrics)
    report = _evaluate(suites, stats, ids_match, metrics, **extra)
    assert [r.name for r in report.failures] == [case]
    [failed] = report.failures
    observed, bound = EXPECTED[case]
    assert failed.bound == bound
    if observed is None:
        assert failed.observed is None or not math.isfinite(failed.observed)
        assert report.to_dict()["results"][GATE_NAMES.index(case)]["observed"] in (None, "nan")
    else:
        assert failed.observed == observed
    assert case in report.summary() and bound in report.summary()
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON even with NaN observed values


# -- suites as data -------------------------------------------------------------------------
def test_default_suites_cover_both_tables(suites):
    assert set(suites.suites) == {"shard_stats", "run_metrics"}
    assert {"mmd2", "domain_acc"} <= set(suites.reported)


@pytest.mark.parametrize("body, match", [
    ("suites:\n  shard_stats:\n    - {name: x, type: expect_no_such_thing, kwargs: {column: rows}}\n", "unknown expectation type"),
    ("suites:\n  other_table:\n    - {name: x, type: expect_column_max_to_be_between}\n", "unknown table"),
    ("suites: []\n", "non-empty 'suites'"),
    ("suites: {shard_stats: [{name: a}]}\n", "needs 'name' and 'type'"),
])
def test_bad_suite_files_are_config_errors(tmp_path, body, match):
    path = tmp_path / "gates.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=match):
        load_suites(path)


def test_unknown_bound_placeholder_is_a_config_error(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("suites:\n  run_metrics:\n    - {name: r, type: expect_column_max_to_be_between, "
                    "kwargs: {column: centroid_residual, max_value: '{no_such_bound}'}}\n")
    stats, ids_match, metrics = _good_tables()
    with pytest.raises(ConfigError, match="no_such_bound"):
        evaluate_gates(shard_table(stats, ids_match), metrics, expected_rows=300,
                       settings=GateSettings(suite_file=str(path)))


def test_custom_suite_file_from_settings(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("suites:\n  shard_stats:\n    - {name: norm_mean_ok, type: expect_column_mean_to_be_between, "
                    "kwargs: {column: norm_mean, min_value: 0.99, max_value: 1.01}}\n")
    stats, ids_match, metrics = _good_tables()
    report = evaluate_gates(shard_table(stats, ids_match), metrics, expected_rows=300,
                            settings=GateSettings(suite_file=str(path)))
    assert [r.name for r in report.results] == ["norm_mean_ok"] and report.passed
    assert report.results[0].bound == "in [0.99, 1.01]"


def test_gate_libraries_preload_once_per_process():
    """The CLI starts the preload, the flow calls it again: one import thread, not two; a
    request for the report's libraries after a gates-only preload starts them."""
    from aniso import gates as gates_module

    saved = gates_module._PRELOAD
    try:
        gates_module._PRELOAD = None
        first = gates_module.preload_in_background(report=False)
        assert gates_module.preload_in_background(report=False) is first
        with_report = gates_module.preload_in_background(report=True)
        assert with_report is not first
        assert gates_module.preload_in_background(report=False) is with_report
        assert gates_module.preload_in_background(report=True) is with_report
        with_report.join(120)
        first.join(120)
        import sys

        assert "great_expectations" in sys.modules and "matplotlib" in sys.modules
    finally:
        gates_module._PRELOAD = saved
