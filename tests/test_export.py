"""Exports (clip-retrieval, webdataset): streamed per shard, resumable, verified, readable by their tools."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aniso.errors import ConfigError, StoreCorrupt
from aniso.io.inputs import open_embedding_source
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published import export as export_mod
from aniso.published.export import export_published, verify_export
from aniso.published.writer import publish

N, D = 150, 6  # shards of 64: 64, 64, 22 rows


def _published(url: str, options: dict, *, key: str = "key0000000001", seed: int = 5, n: int = N,
               ids: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Publish ``n`` rows (rows 3 and 70 invalid) as a new version of ``ds`` (LATEST moves to it)."""
    layout = DatasetLayout(url, "ds")
    store = EmbeddingStore.create(layout.substitutes(key), n_rows=n, dim=D, chunk_rows=16,
                                  shard_rows=64, storage_options=options)
    data = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    valid = np.ones(n, bool)
    valid[[r for r in (3, 70) if r < n]] = False
    data[~valid] = 0
    ids = ids or [f"img-{i}" if i % 10 else f"dir/img.{i}" for i in range(n)]  # some ids are not safe tar keys
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, data[a:b], ids[a:b], valid=valid[a:b])
    publish(layout, key, gate_results={}, lineage={}, storage_options=options)
    return data, valid, ids


def _files(folder) -> dict[str, bytes]:
    """Every file under a local folder, by relative path (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_clip_retrieval_export_round_trips(root):
    url, options = root
    data, valid, ids = _published(url, options)
    out = f"{url}-export"
    manifest = export_published(url, "ds", out, "clip-retrieval", storage_options=options)
    assert manifest["rows"] == int(valid.sum()) and manifest["skipped_invalid_rows"] == 2
    assert verify_export(out, options) == []
    # what autofaiss/clip-retrieval read: a folder of float16 .npy + metadata parquet with ids
    source = open_embedding_source(f"{out}/img_emb", options)
    emb, got_ids = source.read_rows(0, source.n_rows)
    assert got_ids == [i for i, v in zip(ids, valid) if v]
    np.testing.assert_array_equal(emb, data[valid].astype(np.float16).astype(np.float32))


def test_webdataset_export_keys_by_id(tmp_path):
    data, valid, ids = _published(str(tmp_path / "root"), {})
    out = str(tmp_path / "wds")
    export_published(str(tmp_path / "root"), "ds", out, "webdataset")
    names = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
    assert names == ["000000.tar", "000001.tar", "000002.tar"]
    seen = {}
    for name in names:
        with tarfile.open(os.path.join(out, name)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for member, payload in members.items():
            if member.endswith(".json"):
                meta = json.loads(payload)
                key = member[: -len(".json")]
                assert key == (meta["id"] if "/" not in meta["id"] and "." not in meta["id"] else f"row{meta['row']}")
                seen[meta["id"]] = np.load(io.BytesIO(members[f"{key}.npy"]))
    assert list(seen) == [i for i, v in zip(ids, valid) if v]
    np.testing.assert_array_equal(seen["dir/img.10"], data[10].astype(np.float16))


def test_export_resumes_after_a_crash_and_detects_damage(tmp_path, monkeypatch):
    _published(str(tmp_path / "root"), {})
    out = str(tmp_path / "clip")
    real = export_mod._write_part

    def crash_on_part_1(fmt, out_, part, *args):
        if part == 1:
            raise OSError("simulated crash while writing part 1")
        return real(fmt, out_, part, *args)

    monkeypatch.setattr(export_mod, "_write_part", crash_on_part_1)
    with pytest.raises(OSError, match="simulated crash"):
        export_published(str(tmp_path / "root"), "ds", out, "clip-retrieval")
    assert verify_export(out) == [f"{out}: no export.json (export unfinished)"]
    first = os.stat(os.path.join(out, "img_emb", "img_emb_0.npy")).st_mtime_ns
    monkeypatch.setattr(export_mod, "_write_part", real)
    manifest = export_published(str(tmp_path / "root"), "ds", out, "clip-retrieval")
    assert os.stat(os.path.join(out, "img_emb", "img_emb_0.npy")).st_mtime_ns == first  # part 0 reused
    assert [p["part"] for p in manifest["parts"]] == [0, 1, 2] and verify_export(out) == []
    target = os.path.join(out, "metadata", "metadata_2.parquet")
    blob = bytearray(open(target, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(target, "wb").write(bytes(blob))
    assert verify_export(out) == [f"part 2: {out}/metadata/metadata_2.parquet does not match its sha256"]


def test_damaged_source_is_not_exported(tmp_path):
    root = str(tmp_path / "root")
    _published(root, {})
    layout = DatasetLayout(root, "ds")
    version = json.load(open(layout.latest))["version"]
    os.remove(os.path.join(layout.published(version), "data.zarr", "id", "c", "1"))
    with pytest.raises(StoreCorrupt, match=r"shard 1 \(rows \[64, 128\)\)"):
        export_published(root, "ds", str(tmp_path / "out"), "webdataset")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_published(root, "ds", str(tmp_path / "out"), "parquet")  # type: ignore[arg-type]


def test_export_cli(tmp_path):
    from aniso.flows.cli import app

    _published(str(tmp_path / "root"), {})
    result = CliRunner().invoke(app, ["export", str(tmp_path / "root"), "--dataset", "ds", "--format", "clip-retrieval",
                                      "--out", str(tmp_path / "clip")])
    assert result.exit_code == 0, result.output
    assert "148 rows in 3 part(s) (2 invalid rows skipped), verified" in result.output
    assert pq.read_table(tmp_path / "clip" / "metadata" / "metadata_0.parquet").column_names == ["id", "row"]


def test_an_export_folder_of_another_version_is_refused_not_reused(tmp_path):
    """Exporting LATEST after a new publication into the old export's folder must not report the
    old files as the new version: it is refused, naming both versions and the fix, and the folder
    is left as it was."""
    root, out = str(tmp_path / "root"), tmp_path / "clip"
    old_data, valid, _ = _published(root, {})
    v1 = export_published(root, "ds", str(out), "clip-retrieval")["version"]
    before = _files(out)
    new_data, _, _ = _published(root, {}, key="key2000000000", seed=6)
    v2 = json.load(open(DatasetLayout(root, "ds").latest))["version"]
    assert v2 != v1
    with pytest.raises(ConfigError, match=rf"already holds a clip-retrieval export of ds version {v1} .*"
                                          rf"choose another --out for a clip-retrieval export of ds version {v2}"):
        export_published(root, "ds", str(out), "clip-retrieval")
    assert _files(out) == before
    assert export_published(root, "ds", str(out), "clip-retrieval", version=v1)["version"] == v1  # same version resumes
    fresh = export_published(root, "ds", str(tmp_path / "clip2"), "clip-retrieval")
    got = open_embedding_source(str(tmp_path / "clip2" / "img_emb")).read_rows(0, fresh["rows"])[0]
    np.testing.assert_array_equal(got, new_data[valid].astype(np.float16).astype(np.float32))


def test_webdataset_keys_are_unique_when_an_id_looks_like_a_fallback_key(tmp_path):
    """Row 5's id is not a safe key (so its key is ``row5``) and row 9's id *is* ``row5``: the two
    samples must still have different keys, each holding its own id and vector."""
    ids = [f"img-{i}" for i in range(N)]
    ids[5], ids[9], ids[12] = "a/b.5", "row5", "row12"
    data, valid, _ = _published(str(tmp_path / "root"), {}, ids=ids)
    out = tmp_path / "wds"
    export_published(str(tmp_path / "root"), "ds", str(out), "webdataset")
    with tarfile.open(out / "000000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    keys = [name.split(".", 1)[0] for name, _ in members]
    samples = [keys[i] for i in range(0, len(keys), 2)]
    assert keys[1::2] == samples and len(set(samples)) == len(samples) == int(valid[:64].sum())
    by_key = {name.split(".", 1)[0]: payload for name, payload in members if name.endswith(".json")}
    assert json.loads(by_key["row5"]) == {"id": "a/b.5", "row": 5}
    assert json.loads(by_key["row9"]) == {"id": "row5", "row": 9}
    assert json.loads(by_key["row12"]) == {"id": "row12", "row": 12}
