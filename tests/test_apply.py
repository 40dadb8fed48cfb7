"""The apply stage (aniso/stages/apply.py): a shard read in blocks (the next block on a second
thread), transformed block by block, hashed as it goes, written whole.

The streamed apply must give what the whole shard gives: the rows of one transform of the
shard's valid rows (zeros where a row is flagged invalid), the marker's checksum of the rows as
stored, and the input digest of the rows as read, at sizes smaller than a block, than a chunk,
and not a multiple of either, on local storage and on the S3 server.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from aniso._fs import join_url
from aniso.errors import InputError, ShardAlignmentError, StoreCorrupt
from aniso.io.rows import open_rows, read_blocks
from aniso.io.store import EmbeddingStore, shard_checksum
from aniso.methods import Aligner, get_aligner
from aniso.stages import apply as apply_stage
from aniso.stages.apply import apply_rows, apply_shard, input_digest, prepare_substitutes
from aniso.testing.synthetic import planted_gap

CHUNK, SHARD, DIM = 16, 96, 24


def _text_store(url: str, options: dict, rows: np.ndarray, invalid: tuple[int, ...] = ()) -> EmbeddingStore:
    store = EmbeddingStore.create(url, n_rows=len(rows), dim=rows.shape[1], chunk_rows=CHUNK, shard_rows=SHARD,
                                  storage_options=options)
    for shard in range(store.n_shards):
        lo, hi = store.shard_range(shard)
        valid = np.ones(hi - lo, bool)
        valid[[i - lo for i in invalid if lo <= i < hi]] = False
        store.write_shard(shard, rows[lo:hi], [f"row-{i}" for i in range(lo, hi)], valid=valid)
    return store


@pytest.fixture(scope="module")
def model_and_rows(tmp_path_factory):
    gap = planted_gap(n=400, d=DIM, seed=4)
    url = get_aligner("anisoalign").fit(gap.text, gap.image, seed=0).save(str(tmp_path_factory.mktemp("m") / "model"))
    return url, gap.text.astype(np.float32)


@pytest.mark.parametrize("n_rows, invalid", [(5, ()), (37, (0, 36)), (250, ()), (250, (3, 95, 96, 200)),
                                             (250, tuple(range(96, 192)))],
                         ids=["under-a-chunk", "under-a-shard-invalid-ends", "3-shards", "3-shards-invalid",
                              "a-shard-all-invalid"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_apply_gives_the_rows_and_digests_of_the_whole_shard(root, model_and_rows, monkeypatch, n_rows,
                                                                      invalid, dtype):
    url, options = root
    model, rows = model_and_rows
    monkeypatch.setattr(apply_stage, "APPLY_BLOCK", 40)  # several blocks per shard, the last one short
    text = _text_store(join_url(url, "text.zarr"), options, rows[:n_rows], invalid)
    subs_url = join_url(url, "subs.zarr")
    for shard in prepare_substitutes(subs_url, text.url, attrs={}, dtype=dtype, compressor="zstd",
                                     storage_options=options):
        apply_shard(model, text.url, subs_url, shard, options)
    subs = EmbeddingStore.open(subs_url, storage_options=options)
    aligner = Aligner.load(model, options)
    for shard in range(text.n_shards):
        emb, ids, valid = text.read_shard(shard)
        expected = np.zeros_like(emb)
        if valid.any():
            expected[valid] = aligner.transform(emb[valid])
        got, got_ids, got_valid = subs.read_shard(shard)
        np.testing.assert_array_equal(got, expected.astype(dtype))
        assert list(got_ids) == list(ids) and np.array_equal(got_valid, valid)
        marker = subs.marker(shard)
        assert marker["sha256"] == shard_checksum(got, list(got_ids))
        assert marker["stats"]["input_sha256"] == input_digest(emb, ids, valid)
        assert marker["valid_rows"] == int(valid.sum()) and marker["stats"]["rows"] == int(valid.sum())
    # the same rows handed over in memory (a frozen-model run's changed shard) give the same marker
    again = EmbeddingStore.create(join_url(url, "again.zarr"), n_rows=n_rows, dim=DIM, chunk_rows=CHUNK,
                                  shard_rows=SHARD, dtype=dtype, storage_options=options)
    for shard in range(text.n_shards):
        emb, ids, valid = text.read_shard(shard)
        marker = apply_rows(model, again, shard, emb, ids, valid, started=0.0)
        assert marker["sha256"] == subs.marker(shard)["sha256"]
        assert marker["stats"]["input_sha256"] == subs.marker(shard)["stats"]["input_sha256"]


def test_blocks_cover_the_range_in_whole_chunks_and_raise_where_a_block_is_bad(tmp_path, model_and_rows):
    _, rows = model_and_rows
    store = _text_store(str(tmp_path / "t.zarr"), {}, rows[:250])
    blocks = list(read_blocks(store, 96, 192, 40))  # 40 rows round down to two 16-row chunks
    assert [len(ids) for _, ids, _ in blocks] == [32, 32, 32]
    np.testing.assert_array_equal(np.concatenate([emb for emb, _, _ in blocks]), store.read_rows(96, 192)[0])
    assert [len(ids) for _, ids, _ in read_blocks(store, 192, 250, 8)] == [16, 16, 16, 10]  # at least a chunk

    # a damaged chunk in the third block: the first two come through, the third raises
    small = EmbeddingStore.create(str(tmp_path / "small.zarr"), n_rows=250, dim=DIM, chunk_rows=CHUNK,
                                  shard_rows=CHUNK)  # one file per chunk: one to damage
    for shard in range(small.n_shards):
        lo, hi = small.shard_range(shard)
        small.write_shard(shard, rows[lo:hi], [f"row-{i}" for i in range(lo, hi)])
    damaged = tmp_path / "small.zarr" / "embedding" / "c" / "4" / "0"  # rows [64, 80)
    damaged.write_bytes(damaged.read_bytes()[:40])
    stream = read_blocks(small, 32, 96, 16)
    assert len(next(stream)[1]) == 16 and len(next(stream)[1]) == 16
    with pytest.raises(StoreCorrupt, match="unreadable"):
        next(stream)


def test_a_closed_stream_ends_its_reader(tmp_path, model_and_rows):
    _, rows = model_and_rows
    store = _text_store(str(tmp_path / "t.zarr"), {}, rows[:250])
    before = {t.ident for t in threading.enumerate()}
    stream = read_blocks(store, 0, 96, 16)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("aniso-read")]


def test_a_bad_row_of_an_in_place_input_names_its_file_and_row_and_writes_nothing(tmp_path, model_and_rows):
    """An in-place ``.npy`` input is checked block by block as it is read: a NaN row fails the
    shard with the file and row, no marker is written, and the other shards are unaffected."""
    from aniso.io.layout import DatasetLayout
    from aniso.stages import ingest as ingest_stage

    model, rows = model_and_rows
    data = rows[:250].copy()
    data[130, 5] = np.nan
    np.save(tmp_path / "text.npy", data)
    ref, _ = ingest_stage.prepare_input(str(tmp_path / "text.npy"), DatasetLayout(str(tmp_path / "out"), "ds"),
                                        modality="text", chunk_rows=CHUNK, shard_rows=SHARD, storage_options={},
                                        in_place=True)
    subs_url = str(tmp_path / "subs.zarr")
    pending = prepare_substitutes(subs_url, ref.url, attrs={}, dtype="float32", compressor="zstd", storage_options={})
    with pytest.raises(InputError, match=r"text\.npy.*130|130.*text\.npy"):
        apply_shard(model, ref.url, subs_url, 1, {})
    for shard in (0, 2):
        apply_shard(model, ref.url, subs_url, shard, {})
    subs = EmbeddingStore.open(subs_url)
    assert pending == [0, 1, 2] and subs.completed_shards() == {0, 2}
    assert open_rows(ref.url, {}).n_rows == 250


def test_a_checksum_handed_to_write_shard_must_be_of_the_rows_as_stored(tmp_path):
    store = EmbeddingStore.create(str(tmp_path / "s.zarr"), n_rows=10, dim=4, chunk_rows=8, shard_rows=16,
                                  dtype="float16")
    rows = np.ones((10, 4), np.float32)
    with pytest.raises(InputError, match="as stored"):
        store.write_shard(0, rows, [str(i) for i in range(10)], checksum=shard_checksum(rows, [str(i) for i in range(10)]))
    assert store.completed_shards() == set()
    with pytest.raises(ShardAlignmentError):
        store.write_shard(0, rows[:9], [str(i) for i in range(9)])
