"""``aniso gc``: old versions and unneeded run data go; kept versions stay readable and verified."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from aniso.errors import ConfigError
from aniso.flows.cli import app
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import list_versions, open_published
from aniso.published.retention import collect_garbage
from aniso.published.writer import publish


def _run(layout: DatasetLayout, key: str, options: dict, seed: int) -> np.ndarray:
    store = EmbeddingStore.create(layout.substitutes(key), n_rows=50, dim=3, chunk_rows=8, shard_rows=16,
                                  storage_options=options)
    data = np.random.default_rng(seed).normal(size=(50, 3)).astype(np.float32)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, data[a:b], [f"{seed}-{i}" for i in range(a, b)])
    return data


def test_gc_keeps_newest_versions_and_their_runs(root):
    url, options = root
    layout = DatasetLayout(url, "ds")
    keys = [f"run{k}aaaaaaaaaaaa" for k in range(3)]
    data = {}
    for seed, key in enumerate(keys):
        data[key] = _run(layout, key, options, seed)
        publish(layout, key, gate_results={}, lineage={}, storage_options=options)
        time.sleep(0.01)
    _run(layout, "inprogressbbbbbbbb", options, 9)  # never published, just written
    versions = list_versions(layout, options)
    assert len(versions) == 3

    dry = collect_garbage(layout, 1, dry_run=True, min_age_s=0, storage_options=options)
    assert sorted(dry.remove_versions) == sorted(layout.published(v) for v in versions[:2])
    assert sorted(dry.remove_runs) == sorted(layout.run(k) for k in (keys[0], keys[1], "inprogressbbbbbbbb"))
    assert dry.bytes_freed > 0 and list_versions(layout, options) == versions  # nothing removed

    # right after publication nothing goes: every version and run is seconds old (gc --keep 1 used
    # to remove versions of any age beyond the newest)
    young = collect_garbage(layout, 1, min_age_s=3600, storage_options=options)
    assert young.remove_runs == [] and young.remove_versions == [] and list_versions(layout, options) == versions
    plan = collect_garbage(layout, 1, min_age_s=0, storage_options=options)
    assert plan.keep_runs == [layout.run(keys[2])]
    assert list_versions(layout, options) == versions[2:]
    ds = open_published(url, "ds", storage_options=options)
    ds.verify()
    np.testing.assert_array_equal(ds.embedding[:], data[keys[2]])


def test_gc_always_keeps_the_latest_version_and_refuses_keep_zero(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    for seed, key in enumerate(("firstaaaaaaaaaaa", "secondaaaaaaaaaa")):
        _run(layout, key, {}, seed)
        publish(layout, key, gate_results={}, lineage={})
        time.sleep(0.01)
    publish(layout, "firstaaaaaaaaaaa", gate_results={}, lineage={})  # LATEST back to the older version
    collect_garbage(layout, 1, min_age_s=0)
    assert len(list_versions(layout)) == 2
    open_published(str(tmp_path), "ds").verify()
    with pytest.raises(ConfigError, match="at least 1"):
        collect_garbage(layout, 0)


def test_gc_cli_dry_run_then_remove(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    for seed, key in enumerate(("firstaaaaaaaaaaa", "secondaaaaaaaaaa")):
        _run(layout, key, {}, seed)
        publish(layout, key, gate_results={}, lineage={})
        time.sleep(0.01)
    os.makedirs(os.path.join(layout.base, "published", "20000101T000000000000Z-deadbeefdead", "data.zarr"))
    dry = CliRunner().invoke(app, ["gc", str(tmp_path), "--dataset", "ds", "--keep", "1", "--dry-run",
                                   "--min-age-hours", "0"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 1 version(s), 1 run(s), 1 unfinished publication(s)" in dry.output
    assert len(list_versions(layout)) == 2
    done = CliRunner().invoke(app, ["gc", str(tmp_path), "--dataset", "ds", "--keep", "1", "--min-age-hours", "0"])
    assert done.exit_code == 0 and "removed 1 version(s)" in done.output
    assert len(list_versions(layout)) == 1
    assert sorted(os.listdir(os.path.join(layout.base, "runs"))) == ["secondaaaaaaaaaa"]
    assert CliRunner().invoke(app, ["gc", str(tmp_path), "--dataset", "ds", "--keep", "0"]).exit_code == 2


def test_gc_right_after_publication_keeps_young_pinned_and_latest_versions_and_says_why(root):
    url, options = root
    layout = DatasetLayout(url, "ds")
    keys = [f"young{k}aaaaaaaaaaa" for k in range(4)]
    for seed, key in enumerate(keys):
        _run(layout, key, options, seed)
        publish(layout, key, gate_results={}, lineage={}, storage_options=options)
        time.sleep(0.01)
    versions = list_versions(layout, options)
    plan = collect_garbage(layout, 1, storage_options=options)  # default --min-age-hours 24
    assert plan.removals == [] and list_versions(layout, options) == versions
    assert "younger than --min-age-hours 24" in plan.reasons[layout.published(versions[0])]
    assert plan.reasons[layout.published(versions[-1])] == "kept: LATEST names it"

    later = time.time() + 25 * 3600  # a day later: only age protects nothing any more
    dry = collect_garbage(layout, 1, dry_run=True, storage_options=options, pinned=[versions[1]], now=later)
    assert dry.remove_versions == [layout.published(v) for v in (versions[0], versions[2])]
    assert dry.reasons[layout.published(versions[1])] == "kept: pinned (--keep-version)"
    assert dry.reasons[layout.published(versions[0])].startswith("older than the 1 newest, not LATEST, published 25.0 h")
    assert list_versions(layout, options) == versions  # a dry run removes nothing
    with pytest.raises(ConfigError, match="--keep-version nope: no such published version"):
        collect_garbage(layout, 1, pinned=["nope"], storage_options=options)
    done = collect_garbage(layout, 1, storage_options=options, pinned=[versions[1]], now=later)
    assert list_versions(layout, options) == [versions[1], versions[3]]
    assert sorted(done.remove_runs) == sorted(layout.run(k) for k in (keys[0], keys[2]))


def test_gc_keeps_the_model_a_kept_version_was_made_with(root):
    """A frozen-model version holds a copy of its model: removing the version that fitted it
    leaves it verifiable, and ``--model latest`` still finds the model."""
    from aniso.methods import CentroidShift
    from aniso.published.model import resolve_model

    url, options = root
    layout = DatasetLayout(url, "ds")
    rng = np.random.default_rng(0)
    aligner = CentroidShift().fit(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 1)
    first, second = "fitaaaaaaaaaaaaa", "frozenaaaaaaaaaa"
    _run(layout, first, options, 0)
    aligner.save(layout.model(first), options)
    v1 = publish(layout, first, gate_results={}, lineage={}, storage_options=options,
                 model_from=layout.model(first))["version"]
    time.sleep(0.01)
    _run(layout, second, options, 1)
    source = resolve_model("latest", layout, options)
    v2 = publish(layout, second, gate_results={}, lineage={}, storage_options=options, model_from=source.url,
                 model_fitted_in=v1, model_fitted_on={})["version"]
    plan = collect_garbage(layout, 1, min_age_s=3600, storage_options=options, now=time.time() + 7200)
    assert plan.remove_versions == [layout.published(v1)] and list_versions(layout, options) == [v2]
    ds = open_published(url, "ds", storage_options=options)
    assert ds.problems() == [] and ds.manifest["model"]["fitted_in"] == v1
    x = rng.normal(size=(7, 3))
    from aniso.methods import Aligner

    kept = Aligner.load(resolve_model("latest", layout, options).url, options)
    assert kept.transform(x).tobytes() == aligner.transform(x).tobytes()


def test_the_retention_flow_applies_the_same_rules(root, prefect_harness):
    from aniso.config import load_settings
    from aniso.flows.retention import retention

    url, options = root
    layout = DatasetLayout(url, "ds")
    keys = ("flowaaaaaaaaaaaa", "flowbbbbbbbbbbbb")
    for seed, key in enumerate(keys):
        _run(layout, key, options, seed)
        publish(layout, key, gate_results={}, lineage={}, storage_options=options)
        time.sleep(0.01)
    versions = list_versions(layout, options)
    settings = load_settings(overrides=[f"storage.root={url}", "storage.dataset=ds"], environ={})
    settings.storage.storage_options = options
    young = retention(settings=settings, keep=1)  # both are seconds old
    assert young["removed"] == [] and list_versions(layout, options) == versions
    done = retention(settings=settings, keep=1, min_age_hours=0)
    assert done["removed"] == [layout.published(versions[0]), layout.run(keys[0])]
    assert done["reasons"][layout.published(versions[1])] == "kept: LATEST names it"
    assert list_versions(layout, options) == versions[1:]
