"""Publication: manifest then LATEST; readers never see an unpublished or partial dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aniso._fs import open_url
from aniso.errors import ConfigError, StoreCorrupt, StoreNotFound
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import open_published, read_latest
from aniso.published.writer import publish


def _stage(layout: DatasetLayout, key: str, options, *, complete=True):
    store = EmbeddingStore.create(layout.substitutes(key), n_rows=300, dim=4, chunk_rows=64, shard_rows=128,
                                  storage_options=options)
    rng = np.random.default_rng(0)
    for shard in range(store.n_shards if complete else store.n_shards - 1):
        start, stop = store.shard_range(shard)
        store.write_shard(shard, rng.normal(size=(stop - start, 4)).astype(np.float32), [f"r{i}" for i in range(start, stop)])
    return store


def test_reader_sees_nothing_before_the_pointer(root):
    url, options = root
    layout = DatasetLayout(url, "ds")
    store = _stage(layout, "key0000000001", options)
    with pytest.raises(StoreNotFound, match="nothing published"):
        open_published(url, "ds", storage_options=options)  # data exist, no pointer yet
    pointer = publish(layout, "key0000000001", gate_results={"passed": True}, lineage={"method": "x"},
                      storage_options=options)
    published = open_published(url, "ds", storage_options=options)
    assert published.manifest["version"] == pointer["version"]
    assert published.manifest["n_rows"] == 300 and len(published.manifest["shards"]) == 3
    np.testing.assert_array_equal(published.embedding[:], store.embedding[:])
    published.verify()


def test_incomplete_runs_are_refused_and_republishing_is_idempotent(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    _stage(layout, "partial000001", {}, complete=False)
    with pytest.raises(StoreCorrupt, match="not every shard"):
        publish(layout, "partial000001", gate_results={}, lineage={})
    assert read_latest(layout) is None
    _stage(layout, "whole00000001", {})
    first = publish(layout, "whole00000001", gate_results={}, lineage={})
    second = publish(layout, "whole00000001", gate_results={}, lineage={})
    assert first == second


def test_rewriting_the_run_store_leaves_the_published_version_intact(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    store = _stage(layout, "key0000000002", {})
    publish(layout, "key0000000002", gate_results={}, lineage={})
    before = open_published(str(tmp_path), "ds").embedding[:]
    store.write_shard(1, np.zeros((128, 4), np.float32), [f"r{i}" for i in range(128, 256)])
    published = open_published(str(tmp_path), "ds")
    np.testing.assert_array_equal(published.embedding[:], before)
    published.verify()


def test_names_cannot_escape_the_root(tmp_path):
    for bad in ("../elsewhere", "a/b", "", ".."):
        with pytest.raises(ConfigError, match="not a safe name"):
            DatasetLayout(str(tmp_path), bad)
    with pytest.raises(ConfigError):
        DatasetLayout(str(tmp_path), "ok").run("../../x")


def test_manifest_is_self_describing(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    _stage(layout, "key0000000003", {})
    pointer = publish(layout, "key0000000003", gate_results={"passed": True}, lineage={"code_version": "v"})
    with open_url(f"{layout.base}/{pointer['manifest']}", "r") as f:
        manifest = json.load(f)
    assert manifest["arrays"]["embedding"]["shape"] == [300, 4]
    assert manifest["arrays"]["embedding"]["dtype"] == "float32"
    assert manifest["lineage"] == {"code_version": "v"} and manifest["gates"] == {"passed": True}
    # readable with plain zarr from the manifest alone
    import zarr

    group = zarr.open_group(f"{layout.base}/published/{pointer['version']}/{manifest['path']}", mode="r")
    assert group["embedding"].shape == (300, 4)


def test_a_report_that_cannot_be_written_does_not_stop_publication(tmp_path, caplog):
    layout = DatasetLayout(str(tmp_path), "ds")
    _stage(layout, "key0000000009", {})
    # the quality folder holds no report.json: the version is published without a report
    pointer = publish(layout, "key0000000009", gate_results={}, lineage={},
                      report_from=str(tmp_path / "no-quality"))
    assert "report" not in pointer
    manifest = open_published(str(tmp_path), "ds").manifest
    assert "report" not in manifest
    assert "published without its report" in caplog.text
    assert not (tmp_path / "ds" / "published" / pointer["version"] / "report.html").exists()
