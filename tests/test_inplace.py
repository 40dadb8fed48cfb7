"""``.npy`` / clip-retrieval inputs read in place (byte ranges), local and S3, at awkward sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aniso._fs import exists, join_url, open_url
from aniso.errors import InputError
from aniso.io.layout import DatasetLayout
from aniso.io.npy_view import VIEW_JSON, NpyView
from aniso.io.rows import open_rows
from aniso.io.store import EmbeddingStore
from aniso.numeric.moments import Moments
from aniso.stages import ingest as ingest_stage
from aniso.stages import statistics as statistics_stage


def _put_npy(url, array, options):
    with open_url(url, "wb", options) as f:
        np.save(f, array)


def _prepare(url, options, *, chunk_rows, shard_rows, in_place=True):
    ref, pending = ingest_stage.prepare_input(url, DatasetLayout(url + "-out", "ds"),
                                              modality="text", chunk_rows=chunk_rows, shard_rows=shard_rows,
                                              storage_options=options, in_place=in_place)
    return ref.url, ref.fingerprint, pending


@pytest.mark.parametrize("n_rows, chunk_rows, shard_rows", [(5, 8, 16), (1000, 64, 192), (1000, 100, 1000)])
def test_view_reads_what_the_copy_holds(root, n_rows, chunk_rows, shard_rows):
    """Same shards, rows, ids, validity and moments as the Zarr copy; no embedding data written."""
    url, options = root
    data = np.random.default_rng(n_rows).normal(size=(n_rows, 12)).astype(np.float16)
    _put_npy(join_url(url, "x.npy"), data, options)
    view_url, fingerprint, pending = _prepare(join_url(url, "x.npy"), options, chunk_rows=chunk_rows,
                                              shard_rows=shard_rows)
    assert pending == [] and view_url.endswith(".npy-view")
    assert not exists(join_url(view_url, "embedding"), options)
    copy_url, copy_fp, todo = _prepare(join_url(url, "x.npy"), options, chunk_rows=chunk_rows,
                                       shard_rows=shard_rows, in_place=False)
    for shard in todo:
        ingest_stage.import_shard(join_url(url, "x.npy"), copy_url, shard, options)
    view, copy = open_rows(view_url, options), open_rows(copy_url, options)
    assert isinstance(view, NpyView) and isinstance(copy, EmbeddingStore)
    assert fingerprint == copy_fp
    assert (view.shape, view.chunk_rows, view.shard_rows, view.n_shards) == (
        copy.shape, copy.chunk_rows, copy.shard_rows, copy.n_shards)
    for shard in range(view.n_shards):
        (ev, iv, vv), (ec, ic, vc) = view.read_shard(shard), copy.read_shard(shard)
        np.testing.assert_array_equal(ev, ec)
        assert list(iv) == list(ic) and vv.all() and vc.all()
        assert view.marker(shard)["valid_rows"] == copy.marker(shard)["valid_rows"]
    np.testing.assert_array_equal(view.ids[3:5], copy.ids[3:5])
    merged = [Moments.from_chunk(e) for e in view]
    assert sum(m.n for m in merged) == n_rows
    stats = statistics_stage.load_moments(statistics_stage.shard_moments(view_url, 0, options), options)
    np.testing.assert_array_equal(stats.mean, Moments.from_chunk(copy.read_shard(0)[0], products="float32").mean)


def test_sampled_rows_are_read_by_row_where_local(root):
    """A fit's sample: rows read one by one through a memory map from local parts (straddling
    files), whole shards on object storage; the same rows either way."""
    url, options = root
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=(n, 12)).astype(np.float16) for n in (37, 25, 1)]
    for i, part in enumerate(parts):
        _put_npy(join_url(url, "emb", f"text_emb_{i}.npy"), part, options)
    view_url, _, _ = _prepare(join_url(url, "emb"), options, chunk_rows=8, shard_rows=16)
    view = open_rows(view_url, options)
    indices = np.array([0, 5, 36, 37, 40, 61, 62])
    expected = np.concatenate(parts).astype(np.float32)[indices]
    np.testing.assert_array_equal(statistics_stage.sample_rows(view, indices), expected)
    assert (view.read_rows_at(indices) is None) == url.startswith("s3://")


def test_bad_sampled_row_is_named(tmp_path):
    data = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    data[13] = np.nan
    _put_npy(str(tmp_path / "x.npy"), data, {})
    view_url, _, _ = _prepare(str(tmp_path / "x.npy"), {}, chunk_rows=4, shard_rows=8)
    view = open_rows(view_url, {})
    np.testing.assert_array_equal(view.read_rows_at(np.array([1, 12, 14])), data[[1, 12, 14]])
    with pytest.raises(InputError, match=r"x\.npy: row 13 contains NaN or Inf"):
        view.read_rows_at(np.array([2, 13]))


def test_clip_retrieval_parts_and_ids_in_place(root):
    """Shards that straddle files (37 + 25 + 1 rows, shards of 16) and ids from the metadata."""
    url, options = root
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=(n, 8)).astype(np.float32) for n in (37, 25, 1)]
    for i, part in enumerate(parts):
        _put_npy(join_url(url, "cr", "img_emb", f"img_emb_{i}.npy"), part, options)
        with open_url(join_url(url, "cr", "metadata", f"metadata_{i}.parquet"), "wb", options) as f:
            pd.DataFrame({"key": [f"k{i}-{j}" for j in range(len(part))]}).to_parquet(f)
    view_url, _, _ = _prepare(join_url(url, "cr", "img_emb"), options, chunk_rows=8, shard_rows=16)
    view = open_rows(view_url, options)
    assert ingest_stage.needs_id_check(view_url, options)
    ingest_stage.check_unique_ids(view_url, options, what="image")
    emb, ids, _ = view.read_shard(2)  # rows 32..47: file 0 rows 32-36, file 1 rows 0-10
    np.testing.assert_array_equal(emb, np.concatenate(parts)[32:48])
    assert ids[0] == "k0-32" and ids[5] == "k1-0" and len(ids) == 16
    emb, ids, _ = view.read_shard(3)
    assert emb.shape == (15, 8) and ids[-1] == "k2-0"


def test_duplicate_ids_are_named(tmp_path):
    folder = tmp_path / "cr"
    (folder / "text_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "text_emb" / "text_emb_0.npy", np.ones((6, 4), np.float32))
    pd.DataFrame({"key": ["a", "b", "c", "d", "b", "e"]}).to_parquet(folder / "metadata" / "metadata_0.parquet")
    view_url, _, _ = _prepare(str(folder / "text_emb"), {}, chunk_rows=2, shard_rows=4)
    with pytest.raises(InputError, match="id 'b' appears at rows 1 and 4"):
        ingest_stage.check_unique_ids(view_url, {}, what="text")


@pytest.mark.parametrize("bad, message", [("nan", r"x\.npy: row 13 contains NaN or Inf"),
                                          ("inf", r"x\.npy: row 13 contains NaN or Inf"),
                                          ("zero", r"x\.npy: row 13 is an all-zero embedding")])
def test_bad_rows_are_named_when_read(root, bad, message):
    url, options = root
    data = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    data[13] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    if bad != "zero":
        data[13, 1:] = 1.0
    _put_npy(join_url(url, "x.npy"), data, options)
    view_url, _, _ = _prepare(join_url(url, "x.npy"), options, chunk_rows=4, shard_rows=8)
    statistics_stage.shard_moments(view_url, 0, options)  # rows 0..7 are fine
    with pytest.raises(InputError, match=message):
        statistics_stage.shard_moments(view_url, 1, options)


def test_large_finite_rows_are_not_rejected(tmp_path):
    """A finite row whose float32 squared norm overflows is valid input, not 'NaN or Inf'."""
    data = np.ones((5, 4), np.float32)
    data[2] = 3e19
    np.save(tmp_path / "x.npy", data)
    view_url, _, _ = _prepare(str(tmp_path / "x.npy"), {}, chunk_rows=4, shard_rows=8)
    emb, _, valid = open_rows(view_url).read_shard(0)
    assert valid.all() and emb.shape == (5, 4)


def test_view_is_rewritten_identically_and_resumes(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((9, 4), np.float32))
    first = _prepare(str(tmp_path / "x.npy"), {}, chunk_rows=4, shard_rows=8)
    second = _prepare(str(tmp_path / "x.npy"), {}, chunk_rows=4, shard_rows=8)
    assert first == second


def test_a_view_descriptor_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A rewrite that fails half-way (here: a value JSON cannot hold) leaves the descriptor a
    concurrent reader or run already uses as it was, never truncated."""
    np.save(tmp_path / "x.npy", np.ones((9, 4), np.float32))
    view_url, _, _ = _prepare(str(tmp_path / "x.npy"), {}, chunk_rows=4, shard_rows=8)
    descriptor = Path(view_url) / VIEW_JSON
    assert descriptor.exists()
    before = descriptor.read_bytes()
    monkeypatch.setattr(NpyView, "to_json", lambda self: {"rows": 9, "broken": object()})
    with pytest.raises(TypeError):
        _prepare(str(tmp_path / "x.npy"), {}, chunk_rows=4, shard_rows=8)
    assert descriptor.read_bytes() == before
    monkeypatch.undo()
    assert isinstance(open_rows(view_url, {}), NpyView)
