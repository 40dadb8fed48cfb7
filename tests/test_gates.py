"""Quality gates with great-expectations (for real): passing runs pass, each check can fail, and a
failure names the expectation with its observed value and bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aniso.config import GateSettings, load_settings
from aniso.errors import ConfigError
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.methods import get_aligner
from aniso.quality.gates import evaluate_gates, load_suites, shard_table
from aniso.stages import apply as apply_stage
from aniso.stages import gate as gate_stage
from aniso.stages import ingest as ingest_stage

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
    for shard in apply_stage.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="zstd",
                                              storage_options={}):
        apply_stage.apply_shard(model, text, subs, shard, {})
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
    subs.write_shard(1, emb, list(ids), stats=apply_stage.shard_quality(emb, list(ids)))
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


def test_a_validator_built_ahead_is_used_and_rebuilt_for_other_rows_or_bounds(suites):
    """``produce`` builds the great-expectations side while apply runs; a validator built for
    another expected row count or other bounds is not trusted."""
    from aniso.quality.gates import GateValidator

    stats, ids_match, metrics = _good_tables()
    ahead = GateValidator(GateSettings(), expected_rows=300, suites=suites)
    report = evaluate_gates(shard_table(stats, ids_match), metrics, expected_rows=300, settings=GateSettings(),
                            validator=ahead)
    assert report.passed and [r.name for r in report.results] == GATE_NAMES
    stale = GateValidator(GateSettings(), expected_rows=299, suites=suites)
    report = evaluate_gates(shard_table(stats, ids_match), metrics, expected_rows=300, settings=GateSettings(),
                            suites=suites, validator=stale)
    assert report.passed  # 300 rows against 300, not against the stale 299
    strict = GateValidator(GateSettings(knn_overlap_min=0.99), expected_rows=300, suites=suites)
    report = evaluate_gates(shard_table(stats, ids_match), metrics, expected_rows=300, settings=GateSettings(),
                            suites=suites, validator=strict)
    assert report.passed  # the run's bounds, not the ones the validator was built with


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
    """The CLI starts the preload, the flow calls it again: one import thread, not two."""
    from aniso.quality import gates as gates_module

    saved = gates_module._PRELOAD
    try:
        gates_module._PRELOAD = None
        first = gates_module.preload_in_background()
        assert gates_module.preload_in_background() is first
        first.join(120)
        import sys

        assert "great_expectations" in sys.modules
    finally:
        gates_module._PRELOAD = saved


# -- the gate sample, prepared beside apply ---------------------------------------------------
def _without_timing(result):
    return {k: v for k, v in result.items() if k not in ("seconds", "timings", "report")}


def test_a_sample_prepared_before_apply_gives_the_same_gates(run_urls):
    """``produce`` prepares the sample while apply runs; the gates and report must not change."""
    sample = gate_stage.prepare_gate_sample(run_urls["model"], run_urls["text"], GateSettings(), {}, run_urls["image"])
    ahead = gate_stage.gate_run(run_urls["model"], run_urls["text"], run_urls["subs"], run_urls["quality"],
                                GateSettings(), {}, image_store_url=run_urls["image"], sample=sample)
    report_ahead = json.loads(open(ahead["report"]["json"]).read())
    inline = _gate(run_urls)
    report_inline = json.loads(open(inline["report"]["json"]).read())
    assert _without_timing(ahead) == _without_timing(inline)
    assert {k: v for k, v in report_ahead.items() if k not in ("generated", "gate_seconds")} == \
        {k: v for k, v in report_inline.items() if k not in ("generated", "gate_seconds")}
    assert ahead["timings"]["prepared"] == sample.seconds


def test_a_prepared_sample_matches_float16_substitutes(run_urls, caplog):
    """With ``store.output_dtype: float16`` the prepared sample is rounded as apply's rows are:
    it matches what was written, and the gates equal those computed from the rows read."""
    subs16 = run_urls["subs"].replace("substitutes", "substitutes16")
    for shard in apply_stage.prepare_substitutes(subs16, run_urls["text"], attrs={}, dtype="float16", compressor="none",
                                              storage_options={}):
        apply_stage.apply_shard(run_urls["model"], run_urls["text"], subs16, shard, {})
    urls = {**run_urls, "subs": subs16}
    sample = gate_stage.prepare_gate_sample(run_urls["model"], run_urls["text"], GateSettings(report=False), {},
                                            run_urls["image"], output_dtype="float16")
    with caplog.at_level("WARNING", logger="aniso.stages.gate"):
        ahead = gate_stage.gate_run(urls["model"], urls["text"], subs16, urls["quality"], GateSettings(report=False),
                                    {}, image_store_url=urls["image"], sample=sample)
    assert "differ" not in caplog.text
    assert _without_timing(ahead) == _without_timing(_gate(urls, GateSettings(report=False)))
    assert ahead["passed"]


def test_a_stale_sample_never_hides_what_was_written(run_urls, caplog):
    """Substitutes that differ from the model's own map (finite, unit norm: only the sample
    metrics can tell) are judged as written, not as prepared."""
    sample = gate_stage.prepare_gate_sample(run_urls["model"], run_urls["text"], GateSettings(), {}, run_urls["image"])
    subs, text = EmbeddingStore.open(run_urls["subs"], mode="r+"), EmbeddingStore.open(run_urls["text"])
    for shard in range(subs.n_shards):  # write the raw text rows as "substitutes"
        emb, ids, _ = text.read_shard(shard)
        subs.write_shard(shard, emb, list(ids), stats=apply_stage.shard_quality(emb, list(ids)))
    with caplog.at_level("WARNING", logger="aniso.stages.gate"):
        stale = gate_stage.gate_run(run_urls["model"], run_urls["text"], run_urls["subs"], run_urls["quality"],
                                    GateSettings(report=False), {}, image_store_url=run_urls["image"], sample=sample)
    assert "differ from the model's own map" in caplog.text
    fresh = _gate(run_urls, GateSettings(report=False))
    assert stale["metrics"] == fresh["metrics"]
    assert stale["metrics"]["knn_overlap_10"] == 1.0 != sample.metrics["knn_overlap_10"]  # the text itself


@pytest.mark.parametrize("n_rows, chunk_rows", [(5, 256), (1000, 256), (1000, 64)])
def test_gate_rows_are_valid_rows_of_few_chunks_and_read_back_exactly(root, n_rows, chunk_rows):
    url, options = root
    rng = np.random.default_rng(n_rows)
    array = rng.standard_normal((n_rows, 8)).astype(np.float32)
    valid = rng.random(n_rows) > 0.2
    store = EmbeddingStore.create(f"{url}/s.zarr", n_rows=n_rows, dim=8, chunk_rows=chunk_rows, shard_rows=512,
                                  storage_options=options)
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        store.write_shard(shard, array[start:stop], [str(i) for i in range(start, stop)], valid=valid[start:stop])
    rows = gate_stage.gate_rows(store, 100, seed=3, max_chunks=2)
    assert np.all(np.diff(rows) > 0) and valid[rows].all()
    assert len(np.unique(rows // chunk_rows)) <= 2
    chunks = np.unique(rows // chunk_rows)
    in_chunks = sum(int(valid[c * chunk_rows : (c + 1) * chunk_rows].sum()) for c in chunks)
    assert rows.size == min(100, in_chunks)
    assert np.array_equal(gate_stage.gate_rows(store, 100, seed=3, max_chunks=2), rows)  # deterministic
    assert np.array_equal(gate_stage.read_rows_at(store, rows), array[rows])
    everything = gate_stage.gate_rows(store, 10**6, seed=3)
    assert np.array_equal(everything, np.flatnonzero(valid))


def test_ids_of_an_in_place_input_are_checked_by_digest(tmp_path, gap):
    """A ``.npy`` input has no id column: its shards' id digests are derived from the input and
    compared with the substitutes' markers, without reading any id array."""
    np.save(tmp_path / "text.npy", gap.text[:700])
    ref, _ = ingest_stage.prepare_input(str(tmp_path / "text.npy"), DatasetLayout(str(tmp_path), "ds"),
                                        modality="text", chunk_rows=64, shard_rows=256, storage_options={})
    text = ref.url
    model = str(tmp_path / "model")
    get_aligner("realign").fit(gap.text[:700], gap.image).save(model)
    subs = str(tmp_path / "substitutes.zarr")
    for shard in apply_stage.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="none",
                                              storage_options={}):
        apply_stage.apply_shard(model, text, subs, shard, {})
    urls = {"model": model, "text": text, "subs": subs, "image": None, "quality": str(tmp_path / "quality")}
    result = _gate(urls, GateSettings(report=False), image=False)
    assert {r["name"]: r["passed"] for r in result["results"]}["ids_match_input"]
    store = EmbeddingStore.open(subs, mode="r+")
    emb, ids, _ = store.read_shard(1)
    shifted = [f"x{i}" for i in ids]
    store.write_shard(1, emb, shifted, stats=apply_stage.shard_quality(emb, shifted))
    failed = {r["name"]: r for r in _gate(urls, GateSettings(report=False), image=False)["results"] if not r["passed"]}
    assert set(failed) == {"ids_match_input"} and failed["ids_match_input"]["observed"] == 0
