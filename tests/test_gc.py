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

    young = collect_garbage(layout, 1, min_age_s=3600, storage_options=options)  # runs are seconds old
    assert young.remove_runs == [] and len(young.remove_versions) == 2
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
