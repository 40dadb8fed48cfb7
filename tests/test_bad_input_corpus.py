"""Bad input to corpus reading: clip-retrieval ids, truncated tars and the locations errors name.
Each case asserts the error type, that the message names the file, row or byte, and that nothing
already written changed.

Sections: clip-retrieval ids · truncated tars · locations.
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

from aniso.config import CorpusSettings
from aniso.corpus import check_failure_rate, failure_rate, plan_shards, read_shard
from aniso.errors import FailureRateExceeded, InputError
from aniso.io.inputs import open_embedding_source
from aniso.io.layout import DatasetLayout
from aniso.io.npy_view import create_view


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


# -- tar keys repeated across tars ----------------------------------------------------------------
def test_keys_repeated_across_tars_fail_the_rate_check_naming_the_first_tar_and_the_setting(tmp_path, numbered_tars):
    numbered_tars(tmp_path / "corpus", 3, 10)
    with pytest.raises(FailureRateExceeded, match=r"corpus: 20 of 30 items failed .*first bad items: 000000 "
                                                  r"\(.*00001\.tar#000000\): duplicate id '000000' \(an earlier item "
                                                  r"has the same id; first seen in 00000\.tar; .*corpus\.tar_ids=path"):
        check_failure_rate(_records(tmp_path / "corpus"), 0.01)
    specs = plan_shards(str(tmp_path / "corpus"), CorpusSettings(items_per_shard=64, tar_ids="path"), modality="text")
    records = [r for spec in specs for r in read_shard(spec).records()]
    assert check_failure_rate(records, 0.0) == 0.0
    assert sorted(r.id for r in records) == sorted(f"{t:05d}/{k:06d}" for t in range(3) for k in range(10))


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
