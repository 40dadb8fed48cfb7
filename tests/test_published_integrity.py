"""Published versions are self-contained and self-verifying (issue 11: damage, confinement, pointers)."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import zarr

from aniso._fs import filesystem
from aniso.errors import StoreCorrupt
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import open_published
from aniso.published.writer import publish

N, D, CHUNK, SHARD = 300, 4, 64, 128  # 3 shards (128, 128, 44): smaller last shard, not a multiple


def _published(url: str, options: dict, key: str = "key0000000001") -> tuple[DatasetLayout, np.ndarray, dict]:
    layout = DatasetLayout(url, "ds")
    store = EmbeddingStore.create(layout.substitutes(key), n_rows=N, dim=D, chunk_rows=CHUNK, shard_rows=SHARD,
                                  storage_options=options)
    data = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        valid = np.ones(stop - start, bool)
        valid[::7] = False
        store.write_shard(shard, data[start:stop], [f"r{i}" for i in range(start, stop)], valid=valid)
    pointer = publish(layout, key, gate_results={"passed": True}, lineage={}, storage_options=options)
    return layout, data, pointer


def test_versions_survive_deleting_everything_but_published(root):
    url, options = root
    layout, data, pointer = _published(url, options)
    fs, base = filesystem(layout.base, options)
    for entry in fs.ls(base, detail=False):
        if not entry.rstrip("/").endswith("/published"):
            fs.rm(entry, recursive=True)
    assert [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(base, detail=False)] == ["published"]
    ds = open_published(url, "ds", storage_options=options)
    assert ds.manifest["path"] == "data.zarr" and ds.version == pointer["version"]
    np.testing.assert_array_equal(ds.embedding[:], data)
    assert list(ds.ids[:3]) == ["r0", "r1", "r2"] and int(ds.valid.sum()) == ds.manifest["valid_rows"]
    assert ds.problems() == []
    assert ds.manifest["publication"]["method"] == ("hardlink" if not options else "server-side copy")


def test_markers_live_outside_the_group(tmp_path, recwarn):
    layout, _, pointer = _published(str(tmp_path), {})
    group = zarr.open_group(f"{layout.published(pointer['version'])}/data.zarr", mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Object at _shards is not recognized" would raise here
        assert sorted(name for name, _ in group.members()) == ["embedding", "id", "valid"]
    run_group = zarr.open_group(layout.substitutes("key0000000001"), mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(name for name, _ in run_group.members()) == ["embedding", "id", "valid"]
    assert os.path.isdir(layout.substitutes("key0000000001") + ".shards")


def _data_dir(layout: DatasetLayout, pointer: dict) -> str:
    return os.path.join(layout.published(pointer["version"]), "data.zarr")


def test_flipped_byte_raises_in_plain_zarr_and_fails_verify(tmp_path):
    layout, _, pointer = _published(str(tmp_path), {})
    shard_file = os.path.join(_data_dir(layout, pointer), "embedding", "c", "1", "0")
    with open(shard_file, "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0xFF]))
    plain = zarr.open_array(os.path.join(_data_dir(layout, pointer), "embedding"), mode="r")
    plain[:128]  # shard 0 is intact
    with pytest.raises(ValueError, match="checksum"):
        plain[128:256]
    problems = open_published(str(tmp_path), "ds").problems()
    assert len(problems) == 1 and "shard 1 (rows [128, 256))" in problems[0] and "unreadable" in problems[0]
    with pytest.raises(StoreCorrupt, match=r"shard 1 \(rows \[128, 256\)\)"):
        open_published(str(tmp_path), "ds").verify()


def test_swapped_shards_fail_verify(tmp_path):
    layout, _, pointer = _published(str(tmp_path), {})
    folder = os.path.join(_data_dir(layout, pointer), "embedding", "c")
    a, b = os.path.join(folder, "0", "0"), os.path.join(folder, "1", "0")
    shutil.move(a, a + ".tmp")
    shutil.move(b, a)
    shutil.move(a + ".tmp", b)
    problems = open_published(str(tmp_path), "ds").problems()
    assert [p.split(" of ")[0] for p in problems] == ["shard 0 (rows [0, 128))", "shard 1 (rows [128, 256))"]
    assert all("does not match its published checksum" in p for p in problems)


def test_deleted_chunk_fails_verify(tmp_path):
    layout, _, pointer = _published(str(tmp_path), {})
    os.remove(os.path.join(_data_dir(layout, pointer), "embedding", "c", "2", "0"))
    problems = open_published(str(tmp_path), "ds").problems()
    assert len(problems) == 1 and "shard 2 (rows [256, 300))" in problems[0]
    assert "shard file(s) of embedding missing" in problems[0]


@pytest.mark.parametrize("bad", ["/etc", "../../runs/key0000000001/substitutes.zarr", "file:///tmp/x",
                                 "s3://other/x", "data.zarr/../..", "", "./data.zarr", 42])
def test_manifest_paths_are_confined_to_the_version(tmp_path, bad):
    layout, _, pointer = _published(str(tmp_path), {})
    manifest_url = os.path.join(layout.published(pointer["version"]), "manifest.json")
    manifest = json.loads(open(manifest_url).read())
    manifest["path"] = bad
    with open(manifest_url, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(StoreCorrupt, match="not a relative path inside the version folder") as info:
        open_published(str(tmp_path), "ds")
    assert manifest_url in str(info.value)


def test_truncated_manifest_and_bad_latest_name_the_file(tmp_path):
    layout, _, pointer = _published(str(tmp_path), {})
    manifest_url = os.path.join(layout.published(pointer["version"]), "manifest.json")
    text = open(manifest_url).read()
    with open(manifest_url, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(StoreCorrupt, match="not valid JSON") as info:
        open_published(str(tmp_path), "ds")
    assert manifest_url in str(info.value)
    with open(manifest_url, "w") as f:
        json.dump({"format": "aniso-substitutes/2"}, f)
    with pytest.raises(StoreCorrupt, match="lacks required field"):
        open_published(str(tmp_path), "ds")
    for content, match in (('{"manifest": "published/x/manifest.json"}', "lacks its 'version' field"),
                           ('{"version": "../../etc"}', "invalid version"),
                           ('{"vers', "not valid JSON")):
        with open(layout.latest, "w") as f:
            f.write(content)
        with pytest.raises(StoreCorrupt, match=match) as info:
            open_published(str(tmp_path), "ds")
        assert layout.latest in str(info.value)


def test_interrupted_publication_is_redone(tmp_path):
    layout, data, pointer = _published(str(tmp_path), {})
    version_dir = layout.published(pointer["version"])
    os.remove(os.path.join(version_dir, "manifest.json"))  # as if the process died before the manifest
    os.remove(layout.latest)
    shutil.rmtree(os.path.join(version_dir, "data.zarr", "id"))
    again = publish(layout, "key0000000001", gate_results={}, lineage={})
    ds = open_published(str(tmp_path), "ds")
    assert ds.version == again["version"]
    ds.verify()
    np.testing.assert_array_equal(ds.embedding[:], data)


def test_cli_verify_exits_zero_then_three_naming_the_shard(tmp_path):
    from typer.testing import CliRunner

    from aniso.flows.cli import app

    layout, _, pointer = _published(str(tmp_path), {})
    ok = CliRunner().invoke(app, ["verify", str(tmp_path), "--dataset", "ds"])
    assert ok.exit_code == 0, ok.output
    assert f"version {pointer['version']}: 3 shard(s), 300 rows verified" in ok.output
    os.remove(os.path.join(_data_dir(layout, pointer), "id", "c", "1"))
    bad = CliRunner().invoke(app, ["verify", str(tmp_path), "--dataset", "ds", "--version", pointer["version"]])
    assert bad.exit_code == 3
    assert "shard 1 (rows [128, 256))" in bad.output and "1 of 3 shard(s) damaged" in bad.output
    with open(layout.latest, "w") as f:
        f.write("{")
    assert CliRunner().invoke(app, ["verify", str(tmp_path), "--dataset", "ds"]).exit_code == 3
