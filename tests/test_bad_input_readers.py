"""Bad input on the reading side (issue 20): damaged chunks, removed versions, tampered manifests,
bad pointers, bad loader arguments, and gc races. Every case asserts the error type (or exit
code), that the message names the culprit, and that nothing published changed.

Sections: 1 damaged chunks seen by each reader · 2 plain zarr · 3 versions removed under a reader
· 4 tampered manifests (``aniso verify``) · 5 ``LATEST`` and missing versions · 6 loader
arguments · 7 ``gc``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from aniso.errors import ConfigError, StoreCorrupt, StoreNotFound
from aniso.flows.cli import app
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import list_versions, open_published
from aniso.published.lease import live_leases
from aniso.published.retention import collect_garbage
from aniso.published.writer import publish

N, D, CHUNK, SHARD = 300, 4, 64, 128  # 3 shards (128, 128, 44), 5 chunks (the last 44 rows)
KEY = "keyA000000000001"


def _write_run(layout: DatasetLayout, key: str, options: dict, seed: int = 1) -> np.ndarray:
    store = EmbeddingStore.create(layout.substitutes(key), n_rows=N, dim=D, chunk_rows=CHUNK, shard_rows=SHARD,
                                  storage_options=options)
    data = np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        valid = np.ones(stop - start, bool)
        valid[shard % 7 :: 7] = False  # a different pattern per shard: a swap shows
        store.write_shard(shard, data[start:stop], [f"{seed}-{i}" for i in range(start, stop)], valid=valid)
    return data


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    """One published dataset (local), copied afresh for each case that damages it."""
    root = str(tmp_path_factory.mktemp("template"))
    layout = DatasetLayout(root, "ds")
    _write_run(layout, KEY, {})
    publish(layout, KEY, gate_results={"passed": True}, lineage={})
    return root


@pytest.fixture
def pub(template, tmp_path) -> tuple[str, DatasetLayout, str]:
    """``(root, layout, version folder)`` of a private copy of the template."""
    root = str(tmp_path / "root")
    shutil.copytree(template, root)
    layout = DatasetLayout(root, "ds")
    version = list_versions(layout)[-1]
    return root, layout, layout.published(version)


def snapshot(folder: str) -> dict[str, str]:
    """sha256 of every file under ``folder`` (what "nothing published changed" compares)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _shard_file(version_dir: str, array: str, shard: int) -> str:
    return os.path.join(version_dir, "data.zarr", array, "c", str(shard), *(["0"] if array == "embedding" else []))


def _damage(version_dir: str, array: str, kind: str) -> None:
    """Damage ``array``: its shard 1 file missing or truncated, or its shard 0 and 1 files swapped."""
    one = _shard_file(version_dir, array, 1)
    if kind == "missing":
        os.remove(one)
    elif kind == "truncated":
        size = os.path.getsize(one)
        with open(one, "r+b") as f:
            f.truncate(size // 2)
    else:
        zero = _shard_file(version_dir, array, 0)
        os.replace(one, one + ".tmp")
        os.replace(zero, one)
        os.replace(one + ".tmp", zero)


def _read_all(root: str, reader: str, options: dict | None = None, **open_kw) -> None:
    """Read every row of the published version the way ``reader`` does."""
    ds = open_published(root, "ds", storage_options=options, **open_kw)
    if reader == "slice":
        ds.embedding[:]
        ds.ids
        ds.valid
    elif reader == "iter_batches":
        for _ in ds.iter_batches(50):
            pass
    else:
        from aniso.published.torch_loader import PublishedIterableDataset

        for _ in PublishedIterableDataset(root, "ds", batch_size=50, storage_options=options):
            pass


# -- 1. damaged chunks: every aniso reader refuses them, naming version, array and rows ------------------
#: first chunk each damage spoils, reading in row order: chunk 2 for shard 1, chunk 0 for the swap
_ROWS = {"missing": "chunk 2 (rows [128, 192))", "truncated": "chunk 2 (rows [128, 192))",
         "swapped": "chunk 0 (rows [0, 64))"}


@pytest.mark.parametrize("reader", ["slice", "iter_batches", "torch"])
@pytest.mark.parametrize("array", ["embedding", "id", "valid"])
@pytest.mark.parametrize("kind", ["missing", "truncated", "swapped"])
def test_reader_refuses_a_damaged_chunk(pub, reader, array, kind):
    if reader == "torch":
        pytest.importorskip("torch")
    root, _, version_dir = pub
    _damage(version_dir, array, kind)
    before = snapshot(version_dir)
    with pytest.raises(StoreCorrupt) as info:
        _read_all(root, reader)
    message = str(info.value)
    assert os.path.basename(version_dir) in message and f"array {array!r}" in message
    assert _ROWS[kind] in message
    assert snapshot(version_dir) == before


@pytest.mark.parametrize("reader", ["slice", "iter_batches"])
@pytest.mark.parametrize("kind", ["missing", "swapped"])
def test_reader_refuses_a_damaged_chunk_on_s3(s3_root, reader, kind):
    url, options = s3_root
    layout = DatasetLayout(url, "ds")
    _write_run(layout, KEY, options)
    version = publish(layout, KEY, gate_results={}, lineage={}, storage_options=options)["version"]
    import s3fs

    fs = s3fs.S3FileSystem(**{k: v for k, v in options.items()})
    data = layout.published(version).split("://", 1)[1] + "/data.zarr/embedding/c"
    if kind == "missing":
        fs.rm(f"{data}/1/0")
    else:
        zero, one = fs.cat_file(f"{data}/0/0"), fs.cat_file(f"{data}/1/0")
        fs.pipe_file(f"{data}/0/0", one)
        fs.pipe_file(f"{data}/1/0", zero)
    with pytest.raises(StoreCorrupt, match=r"array 'embedding' " + _ROWS[kind].replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")) as info:
        _read_all(url, reader, options)
    assert version in str(info.value)


def test_a_single_chunk_slice_is_checked_and_intact_rows_still_read(pub):
    root, _, version_dir = pub
    _damage(version_dir, "embedding", "missing")
    ds = open_published(root, "ds")
    assert ds.embedding[:128].shape == (128, D) and ds.embedding[260:300, 1].shape == (40,)
    for key in (slice(130, 140), 200, [5, 129], (slice(120, 130), 0)):
        with pytest.raises(StoreCorrupt, match=r"array 'embedding' chunk [23] \(rows \[1(28|92)"):
            ds.embedding[key]


# -- 2. plain zarr: a missing embedding chunk is NaN rows, never zeros --------------------------------------
def test_plain_zarr_reads_a_missing_embedding_shard_as_nan(pub):
    root, _, version_dir = pub
    _damage(version_dir, "embedding", "missing")
    plain = zarr.open_array(os.path.join(version_dir, "data.zarr", "embedding"), mode="r")
    assert np.isnan(plain[128:256]).all() and not np.isnan(plain[:128]).any()
    metadata = os.path.join(version_dir, "data.zarr", "embedding", "zarr.json")
    assert json.loads(open(metadata).read())["fill_value"] == "NaN"


def test_publishing_leaves_the_runs_zero_fill_unchanged(pub):
    root, layout, _ = pub
    run_meta = json.loads(open(os.path.join(layout.substitutes(KEY), "embedding", "zarr.json")).read())
    assert run_meta["fill_value"] == 0.0  # the published metadata is a new file, not the run's, rewritten


# -- 3. a version removed under a reader ---------------------------------------------------------------------
def _two_versions(root: str) -> tuple[DatasetLayout, list[str]]:
    layout = DatasetLayout(root, "ds")
    _write_run(layout, "keyB000000000002", {}, seed=2)
    time.sleep(0.01)
    publish(layout, "keyB000000000002", gate_results={}, lineage={})
    return layout, list_versions(layout)


def test_gc_keeps_a_version_a_reader_is_iterating_and_says_so(pub):
    root, _, old_dir = pub
    layout, versions = _two_versions(root)
    old = open_published(root, "ds", version=versions[0])
    batches = old.iter_batches(32)
    next(batches)
    before = snapshot(old_dir)
    dry = CliRunner().invoke(app, ["gc", root, "--dataset", "ds", "--keep", "1", "--dry-run", "--min-age-hours", "0"])
    assert dry.exit_code == 0, dry.output
    assert f"kept {layout.published(versions[0])}: a reader holds a lease" in dry.output
    collect_garbage(layout, 1, min_age_s=0)
    rows = sum(len(ids) for ids, _ in batches) + 32
    assert rows == int(old.valid.sum()) and list_versions(layout) == versions
    assert snapshot(old_dir) == before
    old.close()
    collect_garbage(layout, 1, min_age_s=0)  # released: now it goes
    assert list_versions(layout) == versions[1:]


def test_an_expired_lease_does_not_keep_a_version(pub):
    root, _, _ = pub
    layout, versions = _two_versions(root)
    open_published(root, "ds", version=versions[0], lease_s=0.05)
    time.sleep(0.1)
    assert live_leases(layout, versions[0]) == []
    assert len(collect_garbage(layout, 1, min_age_s=0).remove_versions) == 1


@pytest.mark.parametrize("reader", ["slice", "iter_batches", "verify"])
def test_a_reader_that_loses_its_version_gets_store_not_found(pub, reader):
    root, _, _ = pub
    layout, versions = _two_versions(root)
    ds = open_published(root, "ds", version=versions[0], lease_s=None)  # unprotected on purpose
    collect_garbage(layout, 1, min_age_s=0)
    assert list_versions(layout) == versions[1:]
    with pytest.raises(StoreNotFound, match=f"{versions[0]}.*removed"):
        if reader == "slice":
            ds.embedding[:10]
        elif reader == "iter_batches":
            list(ds.iter_batches(16))
        else:
            ds.verify()


# -- 4. tampered manifests: aniso verify (and every reader) refuses them ------------------------------------
def _set(path: list, value):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


TAMPER = {
    "no-shards": (_set(["shards"], []), "lists 0 shard(s)"),
    "last-shard-dropped": (lambda m: m["shards"].pop(), "lists 2 shard(s)"),
    "first-shard-dropped": (lambda m: m["shards"].pop(0), "lists 2 shard(s)"),
    "shards-not-a-list": (_set(["shards"], {}), "lists dict shard(s)"),
    "duplicate-shard": (lambda m: m["shards"].__setitem__(1, dict(m["shards"][0])), "shards[1] has {"),
    "shards-reversed": (lambda m: m["shards"].reverse(), "shards[0] has {"),
    "start-shifted": (_set(["shards", 1, "start"], 129), "shards[1] has {'start': 129}"),
    "stop-shifted": (_set(["shards", 1, "stop"], 250), "shards[1] has {'stop': 250}"),
    "rows-wrong": (_set(["shards", 1, "rows"], 127), "shards[1] has {'rows': 127}"),
    "stop-past-end": (_set(["shards", 2, "stop"], 400), "shards[2] has {'stop': 400}"),
    "shard-index": (_set(["shards", 2, "shard"], 5), "shards[2] has {'shard': 5}"),
    "start-as-text": (_set(["shards", 0, "start"], "0"), "shards[0] lacks integer"),
    "valid-rows-negative": (_set(["shards", 0, "valid_rows"], -1), "shards[0] has valid_rows -1"),
    "valid-rows-over": (_set(["shards", 0, "valid_rows"], 129), "shards[0] has valid_rows 129"),
    "valid-rows-total": (lambda m: m.__setitem__("valid_rows", m["valid_rows"] + 1), "shards' valid_rows sum to"),
    "valid-rows-shard": (lambda m: (m["shards"][0].__setitem__("valid_rows", m["shards"][0]["valid_rows"] - 1),
                                    m.__setitem__("valid_rows", m["valid_rows"] - 1)), "valid rows, the manifest says"),
    "valid-rows-above-n": (_set(["valid_rows"], 301), "'valid_rows' is 301"),
    "n-rows-smaller": (_set(["n_rows"], 256), "its geometry says embedding shape [256, 4]"),
    "n-rows-bool": (_set(["n_rows"], True), "'n_rows' is True"),
    "dim-wrong": (_set(["dim"], 8), "its geometry says embedding shape [300, 8]"),
    "chunk-rows-wrong": (_set(["chunk_rows"], 32), "its geometry says embedding chunks [32, 4]"),
    "shard-rows-wrong": (_set(["shard_rows"], 256), "its geometry says embedding shards [256, 4]"),
    "shard-rows-not-multiple": (_set(["shard_rows"], 100), "not a multiple of chunk_rows"),
    "dtype-float16": (_set(["arrays", "embedding", "dtype"], "float16"), "arrays.embedding.dtype is 'float16'"),
    "embedding-shape": (_set(["arrays", "embedding", "shape"], [300, 3]), "arrays.embedding.shape is [300, 3]"),
    "id-shape": (_set(["arrays", "id", "shape"], [299]), "arrays.id.shape is [299]"),
    "sha256-malformed": (_set(["shards", 0, "sha256"], "abc"), "shards[0] has sha256 'abc'"),
    "chunk-digests-short": (lambda m: m["shards"][0]["chunks"]["embedding"].pop(), "shards[0].chunks.embedding"),
    "chunk-digests-missing": (lambda m: m["shards"][1]["chunks"].pop("valid"), "shards[1].chunks.valid"),
    "chunk-digest-altered": (lambda m: m["shards"][1]["chunks"]["id"].__setitem__(0, 7), "id chunk 2 do not match"),
    "chunk-stride-zero": (_set(["chunk_checksum", "embedding_row_stride"], 0), "'chunk_checksum' is"),
    "chunk-algorithm": (_set(["chunk_checksum", "algorithm"], "md5"), "not crc32c"),
    "sha256-altered": (_set(["shards", 2, "sha256"], "0" * 64), "shard 2 (rows [256, 300))"),
    "version-renamed": (_set(["version"], "20000101T000000000000Z-other"), "names version"),
    "format-unknown": (_set(["format"], "aniso-substitutes/9"), "has format 'aniso-substitutes/9'"),
}


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_verify_refuses_a_tampered_manifest(pub, runner, case):
    root, _, version_dir = pub
    edit, expected = TAMPER[case]
    manifest_path = os.path.join(version_dir, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    edit(manifest)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    before = snapshot(version_dir)
    result = runner.invoke(app, ["verify", root, "--dataset", "ds"])
    assert result.exit_code == 3, result.output
    assert expected in result.output and "verified" not in result.output
    assert snapshot(version_dir) == before


# -- 5. LATEST and missing versions: the exit codes `aniso verify --help` documents ---------------------------
@pytest.mark.parametrize("latest, code, expected", [
    ('{"version": "20000101T000000000000Z-gonegonegone"}', 3, "names version '20000101T000000000000Z-gonegonegone'"),
    ("{", 3, "not valid JSON"),
    ('["a"]', 3, "lacks its 'version' field"),
    ('{"version": "../x"}', 3, "invalid version"),
    ('{"version": 7}', 3, "lacks its 'version' field"),
    (None, 2, "nothing published"),
])
def test_verify_exit_code_for_bad_latest(pub, runner, latest, code, expected):
    root, layout, version_dir = pub
    if latest is None:
        os.remove(layout.latest)
    else:
        with open(layout.latest, "w") as f:
            f.write(latest)
    before = snapshot(version_dir)
    result = runner.invoke(app, ["verify", root, "--dataset", "ds"])
    assert result.exit_code == code and expected in result.output, result.output
    assert snapshot(version_dir) == before


def test_verify_of_a_version_that_does_not_exist_exits_two(pub, runner):
    root, _, _ = pub
    result = runner.invoke(app, ["verify", root, "--dataset", "ds", "--version", "20000101T000000000000Z-nosuchversio"])
    assert result.exit_code == 2 and "20000101T000000000000Z-nosuchversio" in result.output
    help_text = re.sub(r"[\s│]+", " ", runner.invoke(app, ["verify", "--help"]).output)
    assert "3 when damaged" in help_text and "2 when nothing is published" in help_text


# -- 6. loader arguments --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"batch_size": -4}, "batch_size"),
    ({"batch_size": "8"}, "batch_size"), ({"batch_size": True}, "batch_size"), ({"batch_size": None}, "batch_size"),
    ({"buffer_chunks": 0}, "buffer_chunks"), ({"buffer_chunks": 1.5}, "buffer_chunks"),
    ({"rank": -1}, "rank"), ({"rank": 3, "world_size": 3}, "rank 3"), ({"rank": 1.0, "world_size": 2}, "rank"),
    ({"world_size": 0}, "world_size"), ({"world_size": 2.0}, "world_size"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"epoch": "1"}, "epoch"), ({"epoch": -2}, "epoch"),
    ({"shuffle": "yes"}, "shuffle"), ({"shuffle": 1}, "shuffle"), ({"only_valid": "no"}, "only_valid"),
    ({"drop_last": None}, "drop_last"), ({"all_valid": 0}, "all_valid"),
])
def test_iter_batches_names_a_bad_argument_on_the_call(template, kwargs, name):
    ds = open_published(template, "ds", lease_s=None)
    kwargs = {"batch_size": 16, **kwargs}
    with pytest.raises(ConfigError, match=name):
        ds.iter_batches(**kwargs)  # raised on the call, before anything is read


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"rank": -1}, "rank"),
    ({"buffer_chunks": 0}, "buffer_chunks"),
])
def test_torch_dataset_names_a_bad_argument(template, kwargs, name):
    pytest.importorskip("torch")
    from aniso.published.torch_loader import PublishedIterableDataset

    with pytest.raises(ConfigError, match=name):
        PublishedIterableDataset(template, "ds", **{"batch_size": 16, **kwargs})


# -- 7. gc ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep, min_age_s, expected", [
    (0, 0, "at least 1"), (-1, 0, "at least 1"), (2.5, 0, "whole number"), (True, 0, "whole number"),
    (1, -3600, "non-negative"), (1, float("nan"), "non-negative"),
])
def test_gc_refuses_bad_arguments_and_removes_nothing(pub, keep, min_age_s, expected):
    root, layout, version_dir = pub
    before = snapshot(os.path.dirname(version_dir))
    with pytest.raises(ConfigError, match=expected):
        collect_garbage(layout, keep, min_age_s=min_age_s)
    assert snapshot(os.path.dirname(version_dir)) == before


def test_two_gc_at_once_do_not_trip_over_each_other(pub):
    root, layout, _ = pub
    for k in range(2, 6):
        _write_run(layout, f"key{k}00000000000", {}, seed=k)
        time.sleep(0.01)
        publish(layout, f"key{k}00000000000", gate_results={}, lineage={})
    versions = list_versions(layout)
    start, errors, plans = threading.Barrier(2), [], []

    def one_gc():
        start.wait()
        try:
            plans.append(collect_garbage(layout, 1, min_age_s=0))
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=one_gc) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list_versions(layout) == versions[-1:]
    open_published(root, "ds", lease_s=None).verify()


def test_gc_does_not_count_hard_linked_bytes_still_in_use_as_freed(tmp_path):
    layout, versions = _two_versions_linked(str(tmp_path))
    old = layout.published(versions[0])
    later = time.time() + 7200  # the versions are two hours old then; the runs are touched "now"
    for base, _, names in os.walk(os.path.join(layout.base, "runs")):
        for name in names:
            os.utime(os.path.join(base, name), (later, later))
    plan = collect_garbage(layout, 1, min_age_s=3600, dry_run=True, now=later)  # the runs are young: kept
    assert plan.remove_versions == [old] and plan.remove_runs == []
    files = [os.path.join(b, f) for b, _, names in os.walk(old) for f in names]
    # publication hard-linked the version's data to its kept run's files: removing them frees nothing
    linked = sum(os.path.getsize(f) for f in files if os.stat(f).st_nlink > 1)
    own = sum(os.path.getsize(f) for f in files if os.stat(f).st_nlink == 1)  # manifest, embedding metadata
    assert linked > 0 and (plan.bytes_freed, plan.bytes_still_linked) == (own, linked)
    # right after publication the CLI's default --min-age-hours 24 keeps both versions, and says why
    result = CliRunner().invoke(app, ["gc", str(tmp_path), "--dataset", "ds", "--keep", "1", "--dry-run"])
    assert result.exit_code == 0 and "would remove 0 version(s)" in result.output
    assert f"younger than --min-age-hours 24: {old}" in result.output


def _two_versions_linked(root: str) -> tuple[DatasetLayout, list[str]]:
    """Two versions published in place (so their data are hard links to the runs' files)."""
    layout = DatasetLayout(root, "ds")
    for seed, key in enumerate((KEY, "keyB000000000002"), start=1):
        _write_run(layout, key, {}, seed=seed)
        publish(layout, key, gate_results={}, lineage={})
        time.sleep(0.01)
    return layout, list_versions(layout)
