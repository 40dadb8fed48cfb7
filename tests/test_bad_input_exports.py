"""Bad input to exports: each case asserts the error type (or exit code), that the message names
the culprit, and that nothing already written changed.

Sections: export folders · webdataset keys. Corpus ids and reading: ``test_bad_input_corpus.py``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_export import D, N, _files, _published
from typer.testing import CliRunner

from aniso.errors import ConfigError, StoreCorrupt
from aniso.io.layout import DatasetLayout
from aniso.published import export as export_mod
from aniso.published.export import export_published, tar_key, verify_export

FORMATS = ("clip-retrieval", "webdataset")


# -- export folders ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[str, str, str]:
    """A local root whose dataset ``ds`` has two versions with different rows; LATEST is the second."""
    root = str(tmp_path_factory.mktemp("exports") / "root")
    _published(root, {})
    v1 = json.load(open(DatasetLayout(root, "ds").latest))["version"]
    _published(root, {}, key="key2000000000", seed=6)
    v2 = json.load(open(DatasetLayout(root, "ds").latest))["version"]
    assert v1 != v2
    return root, v1, v2


def _held(root: str, out, fmt: str, version: str) -> dict[str, bytes]:
    export_published(root, "ds", str(out), fmt, version=version)
    return _files(out)


@pytest.mark.parametrize(("held_fmt", "held_v", "fmt", "v"), [
    ("clip-retrieval", 1, "clip-retrieval", 2),
    ("webdataset", 1, "webdataset", 2),
    ("clip-retrieval", 1, "webdataset", 1),
    ("webdataset", 1, "clip-retrieval", 1),
    ("clip-retrieval", 1, "webdataset", 2),
    ("webdataset", 2, "clip-retrieval", 1),
    ("clip-retrieval", 2, "clip-retrieval", 1),
    ("webdataset", 2, "webdataset", 1),
])
def test_a_folder_holding_another_export_is_refused(two_versions, tmp_path, held_fmt, held_v, fmt, v):
    root, *versions = two_versions
    before = _held(root, tmp_path / "out", held_fmt, versions[held_v - 1])
    with pytest.raises(ConfigError, match=rf"--out .*out already holds a {held_fmt} export of ds version "
                                          rf"{versions[held_v - 1]} .*choose another --out for a {fmt} export of ds "
                                          rf"version {versions[v - 1]}, or remove"):
        export_published(root, "ds", str(tmp_path / "out"), fmt, version=versions[v - 1])
    assert _files(tmp_path / "out") == before


def test_a_folder_holding_another_version_is_refused_on_object_storage(s3_root):
    """The same refusal where listings come from an object store (one format: the check is shared)."""
    from aniso._fs import filesystem

    fmt = "webdataset"

    url, options = s3_root
    _published(url, options)
    out = f"{url}-export"
    v1 = export_published(url, "ds", out, fmt, storage_options=options)["version"]
    fs, path = filesystem(out, options)
    before = {p: fs.cat(p) for p in fs.find(path)}
    _published(url, options, key="key2000000000", seed=6)
    with pytest.raises(ConfigError, match=rf"already holds a {fmt} export of ds version {v1} "):
        export_published(url, "ds", out, fmt, storage_options=options)
    fs.invalidate_cache()
    assert {p: fs.cat(p) for p in fs.find(path)} == before


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("left", ["markers only (export crashed)", "export.json only"])
def test_a_partial_export_of_another_version_is_refused(two_versions, tmp_path, fmt, left):
    root, v1, v2 = two_versions
    out = tmp_path / "out"
    _held(root, out, fmt, v1)
    if left.startswith("markers"):
        (out / "export.json").unlink()
    else:
        for marker in (out / "_export").iterdir():
            marker.unlink()
    before = _files(out)
    with pytest.raises(ConfigError, match=rf"already holds a {fmt} export of ds version {v1} .*version {v2}"):
        export_published(root, "ds", str(out), fmt)
    assert _files(out) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_marker_that_is_not_json_is_refused(two_versions, tmp_path, fmt):
    """aniso writes markers atomically: one that does not parse was not written by this export."""
    root, v1, _ = two_versions
    out = tmp_path / "out"
    _held(root, out, fmt, v1)
    (out / "export.json").unlink()
    (out / "_export" / "part-000001.json").write_text("{trunc")
    before = _files(out)
    with pytest.raises(ConfigError, match=r"no recorded source .*part-000001\.json"):
        export_published(root, "ds", str(out), fmt, version=v1)
    assert _files(out) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_markers_without_a_source_are_refused(two_versions, tmp_path, fmt):
    """Markers of an older aniso name no version: reusing them could be the stale-files bug again."""
    root, v1, _ = two_versions
    out = tmp_path / "out"
    _held(root, out, fmt, v1)
    (out / "export.json").unlink()
    for marker in (out / "_export").iterdir():
        payload = json.loads(marker.read_text())
        del payload["source"]
        marker.write_text(json.dumps(payload))
    before = _files(out)
    with pytest.raises(ConfigError, match=r"holds an export with no recorded source \(written by an older aniso, or not by aniso\) "
                                          r"\(.*part-000000\.json\)"):
        export_published(root, "ds", str(out), fmt, version=v1)
    assert _files(out) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_version_resumes_without_rewriting(two_versions, tmp_path, fmt):
    root, v1, _ = two_versions
    before = _held(root, tmp_path / "out", fmt, v1)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file() and "_export" not in p.parts
              and p.name != "export.json"}
    assert export_published(root, "ds", str(tmp_path / "out"), fmt, version=v1)["version"] == v1
    assert _files(tmp_path / "out") == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_releases_its_reader_lease(two_versions, tmp_path, fmt):
    """The export leases the version while it reads (gc keeps it) and releases it when done."""
    root, v1, _ = two_versions
    leases = Path(root) / "ds" / "leases"
    before = {p for p in leases.rglob("*") if p.is_file()} if leases.exists() else set()
    export_published(root, "ds", str(tmp_path / "out"), fmt, version=v1)
    assert ({p for p in leases.rglob("*") if p.is_file()} if leases.exists() else set()) == before


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("inside", ["ds", "ds/published", "ds/published/{v1}", "ds/published/{v1}/data.zarr",
                                    "ds/runs/somewhere", "."])
def test_an_out_overlapping_the_dataset_folder_is_refused(two_versions, fmt, inside):
    root, v1, _ = two_versions
    out = f"{root}/{inside.format(v1=v1)}".rstrip("/.")
    before = _files(Path(root) / "ds")
    with pytest.raises(ConfigError, match=r"--out .* overlaps the dataset folder .*/ds; export to a folder outside it"):
        export_published(root, "ds", out, fmt)
    assert _files(Path(root) / "ds") == before


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", [b'{"foo": 1}', b'{"format": "webdataset"}', b"[1, 2]", b"{not json"])
def test_a_foreign_export_json_is_refused(two_versions, tmp_path, fmt, content):
    """An ``export.json`` that names no source (someone else's file) is not overwritten."""
    root, _, _ = two_versions
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "export.json").write_bytes(content)
    with pytest.raises(ConfigError, match=r"already holds an export with no recorded source .*export\.json"):
        export_published(root, "ds", str(tmp_path / "out"), fmt)
    assert _files(tmp_path / "out") == {"export.json": content}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_out_that_is_a_file_is_refused(two_versions, tmp_path, fmt):
    root, _, _ = two_versions
    (tmp_path / "out.npy").write_bytes(b"not a folder")
    with pytest.raises(ConfigError, match=r"--out .*out\.npy is a file; an export is written to a folder"):
        export_published(root, "ds", str(tmp_path / "out.npy"), fmt)
    assert (tmp_path / "out.npy").read_bytes() == b"not a folder"


@pytest.mark.parametrize(("fmt", "stray"), [
    ("clip-retrieval", "img_emb/img_emb_9.npy"),
    ("clip-retrieval", "metadata/metadata_9.parquet"),
    ("webdataset", "000009.tar"),
])
def test_an_unlisted_part_file_fails_verification(two_versions, tmp_path, fmt, stray):
    """A part file the export did not write would be read as data by the folder's tools."""
    root, v1, _ = two_versions
    out = tmp_path / "out"
    _held(root, out, fmt, v1)
    (out / stray).write_bytes(b"left by something else")
    assert verify_export(str(out)) == [f"{out}/{stray} is not part of this export (export.json does not list it)"]
    from aniso.flows.cli import app

    result = CliRunner().invoke(app, ["export", root, "--dataset", "ds", "--format", fmt, "--out", str(out),
                                      "--version", v1])
    assert result.exit_code == 3 and f"aniso: damaged: {out}/{stray} is not part of this export" in result.output


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_refuses_a_new_version_into_an_old_export_with_exit_2(two_versions, tmp_path, fmt):
    from aniso.flows.cli import app

    root, v1, v2 = two_versions
    before = _held(root, tmp_path / "out", fmt, v1)
    result = CliRunner().invoke(app, ["export", root, "--dataset", "ds", "--format", fmt, "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "verified" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("aniso: error:")]
    assert len(errors) == 1 and f"version {v1}" in errors[0] and f"version {v2}" in errors[0]
    assert _files(tmp_path / "out") == before


@pytest.mark.parametrize(("args", "culprit"), [
    (["--format", "parquet"], "unknown export format 'parquet'"),
    (["--format", "webdataset", "--out", "{root}/ds"], "overlaps the dataset folder"),
    (["--format", "webdataset", "--version", "../ds"], "'../ds'"),
])
def test_cli_bad_export_arguments_exit_2(two_versions, tmp_path, args, culprit):
    from aniso.flows.cli import app

    root, _, _ = two_versions
    argv = ["export", root, "--dataset", "ds"] + [a.format(root=root) for a in args]
    argv += [] if "--out" in args else ["--out", str(tmp_path / "out")]
    before = _files(Path(root))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and culprit in result.output, result.output
    assert _files(Path(root)) == before


# -- webdataset keys ---------------------------------------------------------------------------
def _ids_with(changes: dict[int, str]) -> list[str]:
    ids = [f"img-{i}" for i in range(N)]
    for row, value in changes.items():
        ids[row] = value
    return ids


def _tar_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """A tar's samples as webdataset groups them: consecutive members sharing a key."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tar.extractfile(member).read()
    return samples


@pytest.mark.parametrize("changes", [
    {5: "a/b.5", 9: "row5"},                      # the case: a fallback key beside the same id
    {9: "row5", 5: "dir/x.jpg"},
    {0: "with space", 1: "row0"},
    {64: "x.y", 100: "row64"},                    # across parts
    {12: "row12"},                                # an id of the reserved form at its own row
    {20: "row05", 5: "y.z"},                      # leading zero: still the reserved form
    {30: "k" * 201, 31: "row30"},                 # too long for a key
    {i: f"row{(i + 1) % 64}" if i % 2 else f"u.{i}" for i in range(64)},  # odd rows' ids: even rows' keys
], ids=["issue", "reversed", "space", "across-parts", "own-row", "leading-zero", "too-long", "all-shifted"])
def test_webdataset_keys_never_collide(tmp_path, changes):
    ids = _ids_with(changes)
    data, valid, _ = _published(str(tmp_path / "root"), {}, ids=ids)
    out = tmp_path / "wds"
    export_published(str(tmp_path / "root"), "ds", str(out), "webdataset")
    keys, seen = [], {}
    for tar in sorted(out.glob("*.tar")):
        for key, members in _tar_samples(tar):
            assert sorted(members) == ["json", "npy"], (tar.name, key)
            meta = json.loads(members["json"])
            assert key == tar_key(meta["id"], meta["row"]) and meta["id"] == ids[meta["row"]]
            np.testing.assert_array_equal(np.load(io.BytesIO(members["npy"])), data[meta["row"]].astype(np.float16))
            keys.append(key)
            seen[meta["row"]] = meta["id"]
    assert len(set(keys)) == len(keys) == int(valid.sum())
    assert sorted(seen) == np.flatnonzero(valid).tolist()


def _tar_of(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            payload = (json.dumps({"id": name.split(".")[0], "row": 0}).encode() if name.endswith(".json")
                       else export_mod._npy_bytes(np.zeros(D, np.float16)))
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize(("names", "culprit"), [
    (["a.npy", "a.json", "a.npy", "a.json"], "key 'a' names more than one sample"),
    (["a.npy", "a.json", "b.npy", "b.json", "a.npy", "a.json"], "key 'a' names more than one sample"),
    (["a.npy", "b.npy", "b.json"], r"sample 'a' holds \['npy'\]"),
    (["a.npy", "a.json", "a.txt"], r"sample 'a' holds \['json', 'npy', 'txt'\]"),
])
def test_a_tar_read_back_refuses_shared_or_incomplete_samples(names, culprit):
    """The read-back check a written tar must pass (so a key collision can never be 'verified')."""
    with pytest.raises(StoreCorrupt, match=rf"export part 7 \(webdataset\): {culprit}"):
        export_mod._read_back_tar(_tar_of(names), 7, D)
