"""Corpus readers, shard plans, manifests and the failure-rate check, on local and S3 roots."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aniso._fs import filesystem, join_url, open_url
from aniso.config import CorpusSettings
from aniso.corpus import (
    ItemRecord,
    check_failure_rate,
    decode_image,
    plan_digest,
    plan_shards,
    read_manifest,
    read_shard,
    write_manifest,
)
from aniso.errors import FailureRateExceeded, InputError

TEXTS = [f"caption number {i} with a red square" for i in range(11)]


def _put(url: str, data: bytes, options: dict) -> None:
    with open_url(url, "wb", options) as f:
        f.write(data)


def _image_bytes(fmt: str, seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_text_corpus(fmt: str, url: str, options: dict) -> str:
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    if fmt == "jsonl":
        body = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, TEXTS))
        target = join_url(url, "part.jsonl")
        _put(target, body.encode(), options)
    elif fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "text": TEXTS}), buf)
        target = join_url(url, "part.parquet")
        _put(target, buf.getvalue(), options)
    elif fmt == "csv":
        target = join_url(url, "part.csv")
        _put(target, pd.DataFrame({"id": ids, "text": TEXTS}).to_csv(index=False).encode(), options)
    else:
        target = join_url(url, "part.txt")
        _put(target, ("\n".join(TEXTS) + "\n").encode(), options)
    return target


def _read_all(specs) -> tuple[list[str], list, list]:
    ids, payloads, errors = [], [], []
    for spec in specs:
        items = read_shard(spec)
        ids += items.ids
        payloads += items.payloads
        errors += items.errors
    return ids, payloads, errors


# -- text readers -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "txt"])
def test_text_reader_every_format(root, fmt):
    url, options = root
    _write_text_corpus(fmt, url, options)
    specs = plan_shards(url, CorpusSettings(items_per_shard=4), modality="text", storage_options=options)
    assert [s.shard_id for s in specs] == ["text-00000", "text-00001", "text-00002"]
    assert [s.n_items for s in specs] == [4, 4, 3]
    ids, texts, errors = _read_all(specs)
    assert texts == TEXTS and errors == [None] * len(TEXTS)
    if fmt == "txt":  # no id field: ids default to <file>:<row>
        assert ids == [f"part.txt:{i}" for i in range(len(TEXTS))]
    else:
        assert ids == [f"doc-{i}" for i in range(len(TEXTS))]


def test_text_field_and_default_ids(tmp_path):
    lines = [json.dumps({"caption": t}) for t in TEXTS[:3]]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    specs = plan_shards(str(tmp_path), CorpusSettings(text_field="caption", id_field=None), modality="text")
    ids, texts, errors = _read_all(specs)
    assert texts == TEXTS[:3] and ids == ["a.jsonl:0", "a.jsonl:1", "a.jsonl:2"]


def test_plan_is_deterministic_and_independent_of_shard_size(root):
    url, options = root
    _write_text_corpus("jsonl", url, options)
    _write_text_corpus("txt", url, options)
    a = plan_shards(url, CorpusSettings(items_per_shard=5), storage_options=options)
    b = plan_shards(url, CorpusSettings(items_per_shard=5), storage_options=options)
    c = plan_shards(url, CorpusSettings(items_per_shard=3), storage_options=options)
    assert a == b and plan_digest(a) == plan_digest(b) != plan_digest(c)
    assert _read_all(a) == _read_all(c)  # same items in the same order, whatever the cut
    # a range inside a file reads only its own bytes
    assert any(r.byte_start > 0 for s in a for r in s.ranges)


def test_missing_corpus_and_empty_folder_raise(tmp_path):
    with pytest.raises(InputError, match="corpus not found"):
        plan_shards(str(tmp_path / "nope"))
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(InputError, match="no text files"):
        plan_shards(str(tmp_path))


# -- images -----------------------------------------------------------------------------------
def test_image_folder_reader(root):
    url, options = root
    names = {"a/one.png": "PNG", "a/two.jpg": "JPEG", "b/three.webp": "WEBP", "b/four.jpeg": "JPEG"}
    for k, (name, fmt) in enumerate(names.items()):
        _put(join_url(url, "imgs", name), _image_bytes(fmt, k), options)
    _put(join_url(url, "imgs", "notes.md"), b"not an image", options)
    specs = plan_shards(join_url(url, "imgs"), CorpusSettings(items_per_shard=3), modality="image", storage_options=options)
    ids, blobs, errors = _read_all(specs)
    assert ids == ["a/one", "a/two", "b/four", "b/three"]
    assert errors == [None] * 4
    for blob in blobs:
        image, error = decode_image(blob)
        assert error is None and image.size == (16, 16) and image.mode == "RGB"


def test_webdataset_tars_images_and_captions(root):
    url, options = root
    for t in range(2):
        members = []
        for k in range(3):
            key = f"s{t}{k}"
            members.append((f"{key}.jpg", _image_bytes("JPEG", 10 * t + k)))
            if k == 2:
                members.append((f"{key}.json", json.dumps({"text": f"json caption {t}{k}"}).encode()))
            else:
                members.append((f"{key}.txt", f"caption {t}{k}".encode()))
        _put(join_url(url, "wds", f"{t:05d}.tar"), _tar(members), options)
    wds = join_url(url, "wds")
    text_specs = plan_shards(wds, CorpusSettings(items_per_shard=4), modality="text", storage_options=options)
    ids, captions, errors = _read_all(text_specs)
    assert ids == ["s00", "s01", "s02", "s10", "s11", "s12"]
    assert captions == ["caption 00", "caption 01", "json caption 02", "caption 10", "caption 11", "json caption 12"]
    image_specs = plan_shards(wds, CorpusSettings(items_per_shard=4), modality="image", storage_options=options)
    ids, blobs, errors = _read_all(image_specs)
    assert ids[:3] == ["s00", "s01", "s02"] and errors == [None] * 6
    assert all(decode_image(b)[1] is None for b in blobs)
    assert read_shard(image_specs[1]).sources[0].endswith("00001.tar#s11.jpg")


def _tars_with_repeated_keys(url: str, options: dict, tars: int = 2, samples: int = 3) -> str:
    """Tars whose keys start again at 000000 in each file (as many writers make them)."""
    for t in range(tars):
        members = []
        for k in range(samples):
            members += [(f"{k:06d}.jpg", _image_bytes("JPEG", 10 * t + k)), (f"{k:06d}.txt", f"caption {t}{k}".encode())]
        _put(join_url(url, "wds", "part", f"{t:05d}.tar"), _tar(members), options)
    return join_url(url, "wds")


@pytest.mark.parametrize("modality", ["text", "image"])
def test_tar_ids_path_names_each_sample_by_its_tar(root, modality):
    url, options = root
    wds = _tars_with_repeated_keys(url, options)
    by_key = plan_shards(wds, CorpusSettings(items_per_shard=4), modality=modality, storage_options=options)
    specs = plan_shards(wds, CorpusSettings(items_per_shard=4, tar_ids="path"), modality=modality,
                        storage_options=options)
    ids, payloads, errors = _read_all(specs)
    assert ids == [f"part/{t:05d}/{k:06d}" for t in range(2) for k in range(3)]
    assert errors == [None] * 6
    if modality == "text":
        assert payloads == [f"caption {t}{k}" for t in range(2) for k in range(3)]
    assert read_shard(specs[1]).sources[0].endswith("part/00001.tar#000001" + (".jpg" if modality == "image" else ""))
    assert plan_digest(specs) != plan_digest(by_key)  # other ids: another plan, never a resumed one


def test_tar_keys_repeated_across_tars_fail_naming_the_first_tar_and_the_setting(root, caplog):
    url, options = root
    wds = _tars_with_repeated_keys(url, options)
    with caplog.at_level("WARNING", logger="aniso.corpus._plan"):
        specs = plan_shards(wds, CorpusSettings(items_per_shard=4), storage_options=options)
    assert "corpus.tar_ids=path" in caplog.text
    ids, _, errors = _read_all(specs)
    assert ids == [f"{k:06d}" for k in range(3)] * 2  # the default: the key, as webdataset names it
    assert errors[:3] == [None] * 3
    for error in errors[3:]:
        assert "duplicate id" in error and "first seen in part/00000.tar" in error and "corpus.tar_ids=path" in error


# -- the bad-input matrix ---------------------------------------------------------------------
def test_bad_text_items_are_recorded_with_reasons(root):
    url, options = root
    lines = [
        json.dumps({"id": "ok-1", "text": "a good caption"}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xe9 \xff"}',
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "no-field", "caption": "x"}).encode(),
        b"{not json",
        json.dumps({"id": "ok-1", "text": "duplicate id"}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        json.dumps({"id": "ok-2", "text": "another good caption"}).encode(),
    ]
    _put(join_url(url, "bad.jsonl"), b"\n".join(lines) + b"\n", options)
    _put(join_url(url, "bad.txt"), b"fine line\n\xff\xfe broken\n", options)
    specs = plan_shards(url, CorpusSettings(items_per_shard=3), storage_options=options)
    ids, texts, errors = _read_all(specs)
    reasons = dict(zip(ids, errors))
    assert reasons["ok-2"] is None and texts[ids.index("ok-2")] == "another good caption"
    assert "not valid UTF-8" in reasons["bad-utf8"]
    assert reasons["empty"] == "empty text"
    assert reasons["no-field"] == "no 'text' field"
    assert "invalid JSON" in reasons["bad.jsonl:4"]
    assert errors[ids.index("ok-1")] is None  # the first occurrence is kept
    assert "duplicate id 'ok-1'" in errors[len(ids) - 1 - ids[::-1].index("ok-1")]
    assert "not a string" in reasons["number"]
    assert reasons["bad.txt:0"] is None and "not valid UTF-8" in reasons["bad.txt:1"]


def test_bad_image_items_are_recorded_with_reasons(root):
    url, options = root
    imgs = join_url(url, "imgs")
    good = _image_bytes("PNG", 1, size=32)
    _put(join_url(imgs, "good.png"), good, options)
    _put(join_url(imgs, "truncated.png"), good[: len(good) // 2], options)
    _put(join_url(imgs, "garbage.jpg"), b"this is not an image at all", options)
    _put(join_url(imgs, "empty.webp"), b"", options)
    _put(join_url(imgs, "gone.png"), good, options)
    _put(join_url(imgs, "twin.png"), good, options)
    _put(join_url(imgs, "twin.jpg"), _image_bytes("JPEG", 2), options)  # same id "twin"
    specs = plan_shards(imgs, CorpusSettings(items_per_shard=4), modality="image", storage_options=options)
    fs, path = filesystem(join_url(imgs, "gone.png"), options)
    fs.rm(path)  # deleted between planning and reading
    ids, blobs, errors = _read_all(specs)
    reasons = dict(zip(ids, errors))
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["gone"].startswith("missing file")
    assert errors[ids.index("twin")] is None and "duplicate id 'twin'" in errors[len(ids) - 1]
    decoded = {i: decode_image(b) if e is None else (None, e) for i, b, e in zip(ids, blobs, errors)}
    assert decoded["good"][1] is None
    assert decoded["truncated"][1].startswith(("truncated image", "corrupt image"))
    assert decoded["garbage"][1].startswith("undecodable image")


def test_bad_tar_samples(tmp_path):
    members = [("a.png", _image_bytes("PNG")), ("a.txt", b"fine"), ("b.txt", b"\xff\xfe"), ("c.png", b""),
               ("d.json", b'{"text": ""}')]
    (tmp_path / "x.tar").write_bytes(_tar(members))
    texts = read_shard(plan_shards(str(tmp_path), modality="text")[0])
    assert texts.errors[0] is None and "not valid UTF-8" in texts.errors[1]
    assert texts.errors[2] == "no caption (.txt or .json) in sample" and texts.errors[3] == "empty text"
    images = read_shard(plan_shards(str(tmp_path), modality="image")[0])
    assert images.errors == [None, "no image (jpg/png/webp) in sample", "empty file (0 bytes)",
                             "no image (jpg/png/webp) in sample"]


# -- manifest and failure rate ----------------------------------------------------------------
def test_manifest_roundtrip(root):
    url, options = root
    _write_text_corpus("jsonl", url + "-corpus", options)
    specs = plan_shards(url + "-corpus", CorpusSettings(items_per_shard=4), storage_options=options)
    records = [r for spec in specs for r in read_shard(spec).records()]
    written = write_manifest(records, url, "demo", "text", storage_options=options)
    assert written == join_url(url, "demo", "corpus", "text", "manifest.parquet")
    frame = read_manifest(url, "demo", "text", storage_options=options)
    assert list(frame.columns) == ["id", "source", "shard", "status", "error"]
    assert frame["id"].tolist() == [f"doc-{i}" for i in range(11)]
    assert frame["shard"].tolist() == ["text-00000"] * 4 + ["text-00001"] * 4 + ["text-00002"] * 3
    assert (frame["status"] == "ok").all() and frame["error"].isna().all()
    assert frame["source"].iloc[5].endswith("part.jsonl#L6")  # 1-based line of the sixth row


def test_failure_rate_threshold():
    records = [ItemRecord(f"i{k}", f"file.jsonl#L{k}", "text-00000") for k in range(98)]
    records += [ItemRecord("b1", "file.jsonl#L98", "text-00000", "failed", "empty text"),
                ItemRecord("b2", "file.jsonl#L99", "text-00000", "failed", "not valid UTF-8")]
    assert check_failure_rate(records, 0.02) == pytest.approx(0.02)
    with pytest.raises(FailureRateExceeded) as info:
        check_failure_rate(records, 0.01, what="text corpus")
    message = str(info.value)
    assert "2 of 100 items failed (2.00%)" in message and "max_failure_rate=1.00%" in message
    assert "b1 (file.jsonl#L98): empty text" in message and "b2" in message


def test_plan_digest_follows_file_versions(tmp_path):
    """An edited corpus file must never reuse the embeddings of its old version."""
    from aniso.corpus import plan_digest, plan_shards

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "one red circle"}\n{"id": "b", "text": "two blue squares"}\n')
    before = plan_digest(plan_shards(str(corpus)))
    assert plan_digest(plan_shards(str(corpus))) == before  # stable
    corpus.write_text('{"id": "a", "text": "one red circle"}\n{"id": "b", "text": "two blue circles"}\n')
    assert plan_digest(plan_shards(str(corpus))) != before
