"""The model is part of each version; ``--model`` applies it frozen; the guard rails of publication.

Every test runs on a local directory and on the loopback S3 server (the ``root`` fixture).
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from aniso._fs import filesystem, join_url, open_url
from aniso.config import load_settings
from aniso.errors import ConfigError, GateFailed, InputError, SchemaChanged
from aniso.flows._common import make_task_runner
from aniso.flows import produce as produce_module
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore, marker_url
from aniso.methods import Aligner
from aniso.published.dataset import open_published, read_latest
from aniso.published.guard import check_schema
from aniso.published.model import MODEL_PATH, resolve_model
from aniso.quality.drift import DRIFT_METRICS
from aniso.stages.apply import shard_quality

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _settings(url, options, *sets):
    settings = load_settings(profile="ci", overrides=[f"storage.root={url}", "storage.dataset=t", *sets], environ={})
    settings.storage.storage_options = options
    return settings


def _folder(url, options, name, emb, ids, parts):
    """A clip-retrieval folder ``<url>/in/<name>`` of ``parts`` .npy parts with metadata ids."""
    base = join_url(url, "in", name)
    bounds = np.linspace(0, len(emb), parts + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        with open_url(join_url(base, "emb", f"emb_{i}.npy"), "wb", options) as f:
            np.save(f, emb[lo:hi])
        with open_url(join_url(base, "metadata", f"metadata_{i}.parquet"), "wb", options) as f:
            pd.DataFrame({"id": ids[lo:hi], "caption": ["c"] * (hi - lo)}).to_parquet(f)
    return join_url(base, "emb")


def _npy(url, options, name, array):
    path = join_url(url, "in", f"{name}.npy")
    with open_url(path, "wb", options) as f:
        np.save(f, array)
    return path


def run(settings, text, image):
    flow = produce_module.produce.with_options(task_runner=make_task_runner(settings.cluster))
    return flow(text=text, image=image, settings=settings)


def _by_id(ds):
    return dict(zip(ds.ids[:].tolist(), ds.embedding[:]))


def test_version_holds_its_model_and_a_frozen_run_reuses_it_bit_for_bit(root, gap, monkeypatch):
    url, options = root
    n = gap.text.shape[0]
    ids = np.array([f"cap-{i:05d}" for i in range(n)])
    old = np.arange(0, n - 300)  # version 1: all but the last 300 captions
    text1 = _folder(url, options, "v1", gap.text[old], ids[old], parts=2)
    image = _npy(url, options, "image", gap.image)
    first = run(_settings(url, options), text1, image)

    v1 = open_published(url, "t", storage_options=options)
    model = v1.manifest["model"]
    assert model["path"] == MODEL_PATH and model["method"] == "anisoalign" and model["fitted_in"] == v1.version
    assert model["fitted_on"]["text"]["rows"] == len(old) and model["fitted_on"]["image"]["rows"] == n
    assert set(model["files"]) == {"aligner.json", f"state-{model['sha256'][:16]}.npz", "reference.npz"}
    assert v1.manifest["id_source"] == "input" and v1.manifest["lineage"]["mode"] == "fit"
    assert v1.problems() == []
    version_model = join_url(url, "t", "published", v1.version, MODEL_PATH)
    np.testing.assert_array_equal(v1.embedding[:], Aligner.load(version_model, options).transform(gap.text[old]))

    # version 2: the next snapshot, frozen model: rows reordered, 200 removed, the 300 new ones
    # added, cut into three parts instead of two
    rng = np.random.default_rng(7)
    kept = rng.permutation(np.arange(200, n - 300))
    new = np.concatenate([kept[:900], np.arange(n - 300, n), kept[900:]])
    text2 = _folder(url, options, "v2", gap.text[new], ids[new], parts=3)

    def no_statistics(*args, **kwargs):
        raise AssertionError("a frozen-model run computed statistics")

    monkeypatch.setattr(produce_module, "compute_statistics_together", no_statistics)
    second = run(_settings(url, options, "method.model=latest"), text2, image)
    assert second["run_key"] != first["run_key"] and second["gates"]["passed"]
    v2 = open_published(url, "t", storage_options=options)
    assert v2.version != v1.version and v2.problems() == []
    lineage = v2.manifest["lineage"]
    assert lineage["mode"] == "frozen-model"
    assert lineage["model"]["version"] == v1.version and lineage["model"]["sha256"] == model["sha256"]
    assert v2.manifest["model"]["sha256"] == model["sha256"] and v2.manifest["model"]["fitted_in"] == v1.version
    assert v2.manifest["model"]["fitted_on"] == model["fitted_on"]
    names = {r["name"] for r in v2.manifest["gates"]["results"]}  # every gate, and the input drift
    assert names == {r["name"] for r in v1.manifest["gates"]["results"]} | {
        "input_drift:text_centroid_shift", "input_drift:image_centroid_shift", "input_drift:text_spectrum_change",
        "input_drift:image_spectrum_change", "input_drift:text_subspace_overlap"}
    assert "reference.npz" in v1.manifest["model"]["files"]
    # the published report shows the drift gate: a verdict sentence, and each figure with its meaning
    with open_url(join_url(url, "t", "published", v2.version, "report.html"), "rb", options) as f:
        page = f.read().decode()
    assert "Input drift: the inputs are within every bound of the model" in page
    for name, (_, _, meaning) in DRIFT_METRICS.items():
        assert f"input_drift:{name}" in page and html.escape(meaning) in page, name
    with open_url(join_url(url, "t", "published", v1.version, "report.html"), "rb", options) as f:
        assert "Input drift" not in f.read().decode()  # a fit has nothing to drift from

    rows1, rows2 = _by_id(v1), _by_id(v2)
    assert set(rows2) == set(ids[new].tolist())  # removed ids are gone, new ids are there
    common = sorted(set(rows1) & set(rows2))
    assert len(common) == n - 300 - 200
    for i in common:  # the same input row: the same bits, whatever its position and part
        assert rows1[i].tobytes() == rows2[i].tobytes(), i

    # the version's model is self-contained: damage is reported by verify
    assert resolve_model(v1.version, DatasetLayout(url, "t"), options).version == v1.version
    fs_path = join_url(version_model, "aligner.json")
    with open_url(fs_path, "rb", options) as f:
        payload = f.read()
    with open_url(fs_path, "wb", options) as f:
        f.write(payload.replace(b'"name"', b'"name" '))
    assert any("aligner.json does not match its sha256" in p for p in open_published(
        url, "t", version=v1.version, storage_options=options).problems())

    # guard rails: another dimension is refused before any work, LATEST untouched
    narrow = _folder(url, options, "narrow", gap.text[:100, :32], ids[:100], parts=1)
    narrow_image = _npy(url, options, "narrow-image", gap.image[:100, :32])
    with pytest.raises(SchemaChanged, match=r"dataset 't'.*dim 64 -> 32.*publish.allow_schema_change=true"):
        run(_settings(url, options), narrow, narrow_image)
    assert read_latest(DatasetLayout(url, "t"), options)["version"] == v2.version
    # ... and so are row-number ids after ids from the input (a bare .npy), and another dtype
    bare = _npy(url, options, "bare", gap.text)
    with pytest.raises(SchemaChanged, match="id_source input -> row-number"):
        run(_settings(url, options, "corpus.embedding_ids=row-number"), bare, image)
    with pytest.raises(SchemaChanged, match="dtype float32 -> float16"):
        run(_settings(url, options, "store.output_dtype=float16"), text2, image)
    check_schema(DatasetLayout(url, "t"), dim=32, dtype="float16", id_source="row-number", allow=True,
                 storage_options=options)  # allowed when asked for


def test_frozen_model_refuses_inputs_without_ids_and_bad_references(root, gap):
    url, options = root
    bare = _npy(url, options, "text", gap.text)
    image = _npy(url, options, "image", gap.image)
    with pytest.raises(ConfigError, match="--model latest: nothing is published"):
        run(_settings(url, options, "method.model=latest", "corpus.embedding_ids=row-number"), bare, image)
    with pytest.raises(InputError, match=r"text\.npy has no ids.*corpus\.embedding_ids=row-number"):
        run(_settings(url, options, "method.model=latest"), bare, image)
    assert read_latest(DatasetLayout(url, "t"), options) is None  # nothing published
    first = run(_settings(url, options, "method.name=realign"), bare, image)
    with pytest.raises(ConfigError, match="'nope' is not 'latest', a published version"):
        run(_settings(url, options, "method.model=nope", "corpus.embedding_ids=row-number"), bare, image)
    # row numbers as ids when declared; the model named by its version; same rows, same bits
    frozen = run(_settings(url, options, f"method.model={first['published']['version']}",
                           "corpus.embedding_ids=row-number"), bare, image)
    layout = DatasetLayout(url, "t")
    v1 = open_published(url, "t", version=first["published"]["version"], storage_options=options)
    v2 = open_published(url, "t", version=frozen["published"]["version"], storage_options=options)
    assert v2.manifest["lineage"]["model"]["version"] == v1.version and v2.manifest["lineage"]["method"] == "realign"
    assert v1.embedding[:].tobytes() == v2.embedding[:].tobytes()
    assert read_latest(layout, options)["version"] == v2.version


def test_an_appended_corpus_carries_unchanged_shards_over_and_applies_the_rest(root, gap):
    url, options = root
    ids = np.array([f"row-{i:05d}" for i in range(gap.text.shape[0])])
    image = _npy(url, options, "image", gap.image)
    # ci profile: shards of 1,024 rows; version 1 has 1,300 rows (one full shard, one partial)
    first = run(_settings(url, options, "method.name=realign"),
                _folder(url, options, "a", gap.text[:1300], ids[:1300], parts=2), image)
    assert first["gates"]["passed"]
    v1 = open_published(url, "t", storage_options=options)
    assert all(len(s["input_sha256"]) == 64 for s in v1.manifest["shards"])

    # the next snapshot appends 700 rows: shard 0 is carried over, shard 1 is applied
    grown = run(_settings(url, options, "method.model=latest"),
                _folder(url, options, "b", gap.text[:2000], ids[:2000], parts=3), image)
    v2 = open_published(url, "t", storage_options=options)
    assert v2.manifest["lineage"]["incremental"] == {
        "from_version": v1.version, "carried_shards": 1, "applied_shards": 1, "carried_rows": 1024, "applied_rows": 976}
    assert v2.problems() == [] and grown["gates"]["passed"]
    assert v2.manifest["shards"][0]["sha256"] == v1.manifest["shards"][0]["sha256"]
    assert v2.embedding[:1300].tobytes() == v1.embedding[:].tobytes()
    if not url.startswith("s3://"):  # locally the carried shard is the same file (a hard link)
        import os

        shard_file = ("data.zarr", "embedding", "c", "0", "0")
        inode = [os.stat(os.path.join(url, "t", "published", v.version, *shard_file)).st_ino for v in (v1, v2)]
        assert inode[0] == inode[1]

    # one caption edited in shard 0 and the last one removed: nothing matches, every row of the
    # unchanged captions keeps its bits all the same
    text3 = gap.text[:1999].copy()
    text3[5] = gap.text[1999]
    run(_settings(url, options, "method.model=latest"), _folder(url, options, "c", text3, ids[:1999], parts=1), image)
    v3 = open_published(url, "t", storage_options=options)
    assert v3.manifest["lineage"]["incremental"]["carried_shards"] == 0
    rows2, rows3 = _by_id(v2), _by_id(v3)
    assert "row-01999" not in rows3 and rows3["row-00005"].tobytes() != rows2["row-00005"].tobytes()
    assert all(rows3[i].tobytes() == rows2[i].tobytes() for i in rows3 if i != "row-00005")


@pytest.mark.parametrize("earlier_run", ["kept", "removed", "older marker"])
def test_a_carried_shard_takes_its_figures_from_the_earlier_marker_or_reads_itself_back(root, gap, monkeypatch,
                                                                                       earlier_run):
    """A shard carried as hard links takes its marker's figures from the earlier run's marker (no
    read back); a server-side copy, or a shard whose earlier run ``aniso gc`` removed, is read back
    and checked. Either way the marker holds the shard's own quality figures."""
    url, options = root
    ids = np.array([f"row-{i:05d}" for i in range(gap.text.shape[0])])
    image = _npy(url, options, "image", gap.image)
    run(_settings(url, options, "method.name=realign"), _folder(url, options, "a", gap.text[:1300], ids[:1300], parts=2), image)
    v1 = open_published(url, "t", storage_options=options)
    layout = DatasetLayout(url, "t")
    if earlier_run == "removed":
        fs, path = filesystem(layout.run(v1.manifest["run_key"]), options)
        fs.rm(path, recursive=True)
    if earlier_run == "older marker":  # written before markers had every figure: not taken as is
        fs, path = filesystem(marker_url(layout.substitutes(v1.manifest["run_key"]), 0), options)
        older = json.loads(fs.cat_file(path))
        del older["chunks_row_stride"]
        fs.pipe_file(path, json.dumps(older).encode())
    reads, read_shard = [], EmbeddingStore.read_shard

    def counted(self, shard, **kwargs):
        reads.append((self.url, shard))
        return read_shard(self, shard, **kwargs)

    monkeypatch.setattr(EmbeddingStore, "read_shard", counted)
    run(_settings(url, options, "method.model=latest"), _folder(url, options, "b", gap.text[:2000], ids[:2000], parts=3), image)
    monkeypatch.undo()
    v2 = open_published(url, "t", storage_options=options)
    assert v2.manifest["lineage"]["incremental"]["carried_shards"] == 1
    assert v2.problems() == [] and v2.embedding[:1300].tobytes() == v1.embedding[:].tobytes()
    subs = EmbeddingStore.open(layout.substitutes(v2.manifest["run_key"]), storage_options=options)
    marker = subs.marker(0)
    emb, shard_ids, valid = subs.read_shard(0)
    expected = shard_quality(emb[valid], list(shard_ids[valid]))
    assert marker["stats"]["carried"] and {k: marker["stats"][k] for k in expected} == expected
    assert marker["sha256"] == v1.manifest["shards"][0]["sha256"] and marker["chunks"] == v1.manifest["shards"][0]["chunks"]
    read_back = (subs.url, 0) in reads
    assert read_back == (earlier_run != "kept" or url.startswith("s3://"))


def test_input_drift_fails_the_run_or_refits_on_drift(root, gap):
    url, options = root
    n = gap.text.shape[0]
    ids = np.array([f"d-{i:05d}" for i in range(n)])
    image = _npy(url, options, "image", gap.image)
    first = run(_settings(url, options, "method.name=realign"), _folder(url, options, "a", gap.text, ids, parts=1), image)
    layout = DatasetLayout(url, "t")
    # captions from another distribution: the same rows with their coordinates reversed
    other = _folder(url, options, "other", np.ascontiguousarray(gap.text[:, ::-1]), ids, parts=1)
    with pytest.raises(GateFailed, match=r"input_drift gate failed, nothing published: "
                                         r"input_drift:text_centroid_shift observed [0-9.]+ \(required <= 0.25"):
        run(_settings(url, options, "method.model=latest"), other, image)
    assert read_latest(layout, options)["version"] == first["published"]["version"]  # nothing published

    refit = run(_settings(url, options, "method.model=latest", "method.refit=on_drift"), other, image)
    v2 = open_published(url, "t", storage_options=options)
    lineage = v2.manifest["lineage"]
    assert v2.version == refit["published"]["version"] != first["published"]["version"]
    assert lineage["mode"] == "fit" and lineage["method"] == "anisoalign"  # the settings' method: a refit
    assert lineage["refit"]["reason"] == "input_drift" and lineage["refit"]["model_version"] == first["published"]["version"]
    assert any(not r["passed"] for r in lineage["refit"]["drift"])
    # those figures judged the old model; the refit's own gates judge the new one, and all passed
    assert v2.manifest["gates"]["passed"]
    assert not any(r["name"].startswith("input_drift") for r in v2.manifest["gates"]["results"])
    assert v2.manifest["model"]["fitted_in"] == v2.version
