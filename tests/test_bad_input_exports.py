"""Bad input to exports, clip-retrieval ids and corpus reading: each case asserts the error type
(or exit code), that the message names the culprit, and that nothing already written changed.

Sections: export folders · webdataset keys · clip-retrieval ids · truncated tars · locations.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_export import D, N, _files, _published
from typer.testing import CliRunner

from aniso.config import CorpusSettings
from aniso.corpus import check_failure_rate, failure_rate, plan_shards, read_shard
from aniso.errors import ConfigError, FailureRateExceeded, InputError, StoreCorrupt
from aniso.io.inputs import open_embedding_source
from aniso.io.layout import DatasetLayout
from aniso.io.npy_view import create_view
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


# -- clip-retrieval ids ------------------------------------------------------------------------
def _clip_folder(folder: Path, metadata: list[dict | None], rows: int = 5) -> str:
    """A clip-retrieval folder, one part per entry: its metadata columns, or None for no file."""
    (folder / "text_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    for part, columns in enumerate(metadata):
        np.save(folder / "text_emb" / f"text_emb_{part}.npy",
                np.random.default_rng(part).normal(size=(rows, 4)).astype(np.float32))
        if columns is not None:
            pq.write_table(pa.table(columns), folder / "metadata" / f"metadata_{part}.parquet")
    return str(folder / "text_emb")


def _keys(part: int, rows: int = 5) -> dict[str, list[str]]:
    return {"key": [f"p{part}-{i}" for i in range(rows)]}


@pytest.mark.parametrize("has", [(True, False), (False, True), (True, False, True), (True, True, False),
                                 (False, False, True)])
def test_parts_without_metadata_beside_parts_with_it_are_refused(tmp_path, has):
    url = _clip_folder(tmp_path, [_keys(p) if h else None for p, h in enumerate(has)])
    lacking, giving = has.index(False), has.index(True)
    with pytest.raises(InputError, match=rf"text input: .*text_emb_{lacking}\.npy has no .*metadata_{lacking}\.parquet, "
                                         rf"but .*metadata_{giving}\.parquet gives ids .*\({has.count(False)} of "
                                         rf"{len(has)} part\(s\) lack metadata\).*corpus\.embedding_ids=row-number"):
        open_embedding_source(url, what="text input")
    numbered = open_embedding_source(url, ids="row-number")  # one id source for every part
    assert numbered.read_rows(0, numbered.n_rows)[1] == [str(i) for i in range(5 * len(has))]


def test_a_named_id_column_does_not_excuse_a_part_without_metadata(tmp_path):
    url = _clip_folder(tmp_path, [_keys(0), None])
    with pytest.raises(InputError, match=r"text_emb_1\.npy has no .*metadata_1\.parquet"):
        open_embedding_source(url, ids="key")


def test_a_part_whose_name_has_no_index_is_named(tmp_path):
    url = _clip_folder(tmp_path, [_keys(0)])
    np.save(tmp_path / "text_emb" / "extra.npy", np.ones((3, 4), np.float32))
    with pytest.raises(InputError, match=r"extra\.npy has no metadata file \(its name has no _<i> index\)"):
        open_embedding_source(url)


def test_mixed_ids_stop_ingest_before_anything_is_written(tmp_path):
    from aniso.stages import ingest as ingest_stage

    url = _clip_folder(tmp_path / "in", [_keys(0), None])
    layout = DatasetLayout(str(tmp_path / "root"), "ds")
    with pytest.raises(InputError, match=r"text_emb_1\.npy has no"):
        ingest_stage.prepare_input(url, layout, modality="text", chunk_rows=4, shard_rows=4, storage_options={})
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(("values", "row", "shown"), [
    ([None, "b", "c", "d", "e"], 0, "null"),
    (["a", "b", "c", None, "e"], 3, "null"),
    (["a", "b", "c", "d", None], 4, "null"),
    (["a", "", "c", "d", "e"], 1, "blank"),
    (["a", "b", "   ", "d", "e"], 2, "blank"),
    (["a", "b", "c", "d", "\t"], 4, "blank"),
    ([1.0, float("nan"), 3.0, 4.0, 5.0], 1, "NaN"),
    ([b"a", b"b", b"\xff\xfe", b"d", b"e"], 2, "non-UTF-8"),
], ids=["null-first", "null-middle", "null-last", "empty", "spaces", "tab", "nan", "bad-bytes"])
def test_an_unusable_id_is_refused_naming_file_row_and_column(tmp_path, values, row, shown):
    url = _clip_folder(tmp_path, [{"key": values}])
    source = open_embedding_source(url)
    with pytest.raises(InputError, match=rf"metadata_0\.parquet: row {row} has an? {shown}.*column 'key'"):
        source.read_rows(0, 5)
    assert "None" not in source.read_rows(0, row)[1]  # the rows before it are fine


def test_an_unusable_id_in_a_later_part_names_that_file_and_its_row(tmp_path):
    url = _clip_folder(tmp_path, [_keys(0), {"key": ["x", "y", None, "z", "w"]}])
    source = open_embedding_source(url)
    with pytest.raises(InputError, match=r"metadata_1\.parquet: row 2 has a null id"):
        source.read_rows(3, 9)


def test_an_unusable_id_stops_an_in_place_view(tmp_path):
    url = _clip_folder(tmp_path / "in", [{"id": ["a", None, "c", "d", "e"]}])
    view = create_view(str(tmp_path / "view"), open_embedding_source(url), chunk_rows=4, shard_rows=4,
                       storage_options={})
    with pytest.raises(InputError, match=r"metadata_0\.parquet: row 1 has a null id \(column 'id'\)"):
        view.read_shard(0)
    with pytest.raises(InputError, match=r"row 1 has a null id"):
        view.ids_digest(0)


@pytest.mark.parametrize(("values", "expected"), [
    ([10, 11, 12, 13, 14], ["10", "11", "12", "13", "14"]),
    ([b"a", b"b", "é".encode(), b"d", b"e"], ["a", "b", "é", "d", "e"]),
], ids=["integers", "utf8-bytes"])
def test_usable_ids_of_other_types_read_as_text(tmp_path, values, expected):
    url = _clip_folder(tmp_path, [{"key": values}])
    assert open_embedding_source(url).read_rows(0, 5)[1] == expected


# -- truncated tars ----------------------------------------------------------------------------
def _cut_tar(folder: Path, n: int, lost: int, where: str, name: str = "part.tar") -> int:
    """Write a tar of ``n`` caption samples whose last ``lost`` are gone; the byte it ends at.

    ``where``: ``inside`` (in the first lost sample's data), ``header`` (on its header),
    ``eof`` (only the end-of-archive blocks missing, ``lost`` must be 0).
    """
    buf = io.BytesIO()
    starts = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(n):
            starts.append(buf.tell())
            data = f"caption {k} ".encode() * 50
            info = tarfile.TarInfo(f"{Path(name).stem}{k:04d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        end = buf.tell()
    raw = buf.getvalue()
    cut = {"inside": lambda: starts[n - lost] + 700, "header": lambda: starts[n - lost], "eof": lambda: end}[where]()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(raw[:cut])
    return cut


def _records(folder: Path) -> list:
    specs = plan_shards(str(folder), CorpusSettings(items_per_shard=64), modality="text")
    return [r for spec in specs for r in read_shard(spec).records()]


@pytest.mark.parametrize(("n", "lost", "where", "limit"), [
    (400, 6, "inside", 0.01),   # the issue: 6 of 400 lost read as 2 of 396
    (400, 1, "inside", 0.01),
    (400, 3, "header", 0.05),
    (400, 6, "inside", 0.0),
    (100, 50, "inside", 0.99),
    (20, 10, "header", 0.5),
    (50, 0, "eof", 0.01),       # whole samples, but no end-of-archive blocks: more may be lost
])
def test_a_truncated_tar_fails_the_rate_check_naming_file_and_byte(tmp_path, n, lost, where, limit):
    cut = _cut_tar(tmp_path / "corpus", n, lost, where)
    records = _records(tmp_path / "corpus")
    _, failed, total = failure_rate(records)  # what can be counted: the whole lost tail is one record
    with pytest.raises(FailureRateExceeded, match=rf"corpus: .*part\.tar is truncated at byte {cut}: an unknown number "
                                                  rf"of its samples are lost, so the {failed} of {total} items counted "
                                                  rf".*max_failure_rate={limit:.2%}; restore"):
        check_failure_rate(records, limit)


@pytest.mark.parametrize("where", ["inside", "header"])
def test_a_limit_of_one_accepts_a_truncated_tar(tmp_path, where):
    _cut_tar(tmp_path / "corpus", 100, 5, where)
    records = _records(tmp_path / "corpus")
    assert check_failure_rate(records, 1.0) == failure_rate(records)[0] > 0


def test_every_truncated_tar_is_counted_in_the_message(tmp_path):
    first = _cut_tar(tmp_path / "corpus", 30, 2, "inside", "a.tar")
    _cut_tar(tmp_path / "corpus", 30, 4, "header", "b.tar")
    with pytest.raises(FailureRateExceeded, match=rf"a\.tar is truncated at byte {first} \(and 1 more truncated tar"):
        check_failure_rate(_records(tmp_path / "corpus"), 0.5)


def test_the_embed_stage_stops_on_a_truncated_tar_after_writing_the_manifest(tmp_path):
    """The stage still writes the corpus manifest (every failed item with its reason) and then
    fails, so the run stops before statistics; a restored file is a new plan and a new run."""
    from aniso.config import load_settings
    from aniso.corpus import read_manifest, write_records
    from aniso.stages.embed import finish_embedding

    cut = _cut_tar(tmp_path / "corpus", 400, 6, "inside")
    specs = plan_shards(str(tmp_path / "corpus"), CorpusSettings(items_per_shard=64), modality="text")
    store = tmp_path / "store"
    for spec in specs:
        write_records(read_shard(spec).records(), str(store / "_records" / f"{spec.index:06d}.parquet"))
    settings = load_settings(overrides=[f"storage.root={tmp_path / 'root'}", "storage.dataset=ds"])
    with pytest.raises(FailureRateExceeded, match=rf"part\.tar is truncated at byte {cut}"):
        finish_embedding(str(tmp_path / "corpus"), "text", str(store), specs, settings, embedded_now=0)
    manifest = read_manifest(str(tmp_path / "root"), "ds", "text")
    assert (manifest["status"] == "failed").sum() == 2 and len(manifest) == 396


# -- locations: 1-based lines ------------------------------------------------------------------
def _jsonl(texts: list[str | None]) -> bytes:
    """jsonl lines; None is a blank line, "BAD" a line that is not JSON."""
    return b"".join(b"\n" if t is None else b"{not json\n" if t == "BAD" else
                    (json.dumps({"text": t}) + "\n").encode() for t in texts)


def _line_of(data: bytes, needle: bytes) -> int:
    """The 1-based line of ``data`` where ``needle`` first appears."""
    return data[: data.index(needle)].count(b"\n") + 1


@pytest.mark.parametrize(("name", "data", "needle", "per_shard"), [
    ("c.jsonl", _jsonl(["a", "b", "BAD", "d"]), b"{not json", 64),
    ("c.jsonl", _jsonl(["BAD", "b"]), b"{not json", 64),
    ("c.jsonl", _jsonl([None, None, "a", None, "BAD", "c"]), b"{not json", 64),
    ("c.jsonl", _jsonl(["a", "b", "c", None, "d", "BAD", "e"]), b"{not json", 2),  # a range starting mid-file
    ("c.jsonl", _jsonl(["a", "", "c"]), b'""', 64),                                # empty text
    ("c.txt", b"one\ntwo\n\xff\xfe three\nfour\n", b"\xff\xfe", 64),
    ("c.txt", b"\n\none\n   \n\xc3 four\n", b"\xc3", 64),                            # after blank lines
    ("c.txt", b"one\n\n\n\xff broken\n", b"\xff", 2),
    ("c.csv", b'id,text\na,"two\nlines"\nb,\nc,fine\n', b"b,", 64),                  # after a multi-line field
    ("c.csv", b"id,text\na,x\n\nb,\nc,y\n", b"b,", 64),                              # after a blank line
    ("c.tsv", b"id\ttext\na\tx\nb\t\nc\ty\n", b"b\t", 64),
    ("c.csv", b'id,text\na,x\nb,"y"\nc,\n', b"c,", 2),
], ids=["jsonl-3", "jsonl-1", "jsonl-blanks", "jsonl-mid-file", "jsonl-empty", "txt-utf8", "txt-blanks",
        "txt-mid-file", "csv-multiline", "csv-blank", "tsv", "csv-mid-file"])
def test_a_bad_items_location_is_its_1_based_line(tmp_path, name, data, needle, per_shard):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / name).write_bytes(data)
    specs = plan_shards(str(tmp_path / "corpus"), CorpusSettings(items_per_shard=per_shard), modality="text")
    failed = [r for spec in specs for r in read_shard(spec).records() if r.status == "failed"]
    line = _line_of(data, needle)
    assert [r.source.rsplit("/", 1)[1] for r in failed] == [f"{name}#L{line}"]
    with pytest.raises(FailureRateExceeded, match=rf"\(.*{name}#L{line}\)"):
        check_failure_rate(failed, 0.0)


@pytest.mark.parametrize("bad_row", [0, 3, 6])
def test_a_parquet_items_location_is_its_row_index(tmp_path, bad_row):
    texts = [f"text {i}" for i in range(7)]
    texts[bad_row] = "  "
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"text": texts}), tmp_path / "corpus" / "c.parquet")
    specs = plan_shards(str(tmp_path / "corpus"), CorpusSettings(items_per_shard=4), modality="text")
    failed = [r for spec in specs for r in read_shard(spec).records() if r.status == "failed"]
    assert [(r.id, r.source.rsplit("/", 1)[1]) for r in failed] == [(f"c.parquet:{bad_row}", f"c.parquet#row{bad_row}")]


def test_default_ids_keep_their_0_based_index(tmp_path):
    """Ids are names published with the data: they stay as earlier releases made them."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "c.txt").write_bytes(b"zero\n\ntwo\n")
    spec = plan_shards(str(tmp_path / "corpus"), CorpusSettings(), modality="text")[0]
    items = read_shard(spec)
    assert items.ids == ["c.txt:0", "c.txt:2"]
    assert [s.rsplit("/", 1)[1] for s in items.sources] == ["c.txt#L1", "c.txt#L3"]
