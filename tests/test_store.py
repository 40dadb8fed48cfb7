"""Zarr embedding stores on local directories and the loopback S3 server."""

from __future__ import annotations

import numpy as np
import pytest

from aniso._fs import filesystem, join_url
from aniso.errors import InputError, ShardAlignmentError, StoreCorrupt, StoreNotFound
from aniso.io.store import EmbeddingStore


def _make(url, options, n=1000, d=8, shard_rows=256):
    return EmbeddingStore.create(url, n_rows=n, dim=d, chunk_rows=64, shard_rows=shard_rows, storage_options=options)


def _rows(store, shard, seed=0):
    start, stop = store.shard_range(shard)
    data = np.random.default_rng(seed + shard).normal(size=(stop - start, store.dim)).astype(np.float32)
    return data, [f"id-{i}" for i in range(start, stop)]


def test_round_trip_and_markers(root):
    url, options = root
    store = _make(join_url(url, "a.zarr"), options)
    assert store.n_shards == 4 and store.shard_range(3) == (768, 1000)
    for shard in (0, 2):
        store.write_shard(shard, *_rows(store, shard), stats={"k": shard})
    assert store.completed_shards() == {0, 2}
    again = EmbeddingStore.open(store.url, storage_options=options)
    emb, ids, valid = again.read_shard(2)
    np.testing.assert_array_equal(emb, _rows(store, 2)[0])
    assert list(ids) == _rows(store, 2)[1] and valid.all()
    assert again.marker(2)["stats"] == {"k": 2}


def test_misaligned_writes_raise(root):
    url, options = root
    store = _make(join_url(url, "b.zarr"), options)
    block = np.zeros((256, 8), np.float32)
    ids = ["x"] * 256
    with pytest.raises(ShardAlignmentError, match="not aligned"):
        store.write_rows(100, block, ids)
    with pytest.raises(ShardAlignmentError, match="not aligned"):
        store.write_rows(0, block[:100], ids[:100])
    with pytest.raises(ShardAlignmentError, match="holds rows"):
        store.write_shard(1, block[:10], ids[:10])
    assert store.completed_shards() == set()


def test_create_is_idempotent_but_refuses_other_geometry(root):
    url, options = root
    store = _make(join_url(url, "c.zarr"), options)
    store.write_shard(0, *_rows(store, 0))
    reopened = _make(store.url, options)
    assert reopened.completed_shards() == {0}  # resume, data kept
    with pytest.raises(StoreCorrupt, match="already exists"):
        _make(store.url, options, d=16)


def test_iteration_skips_invalid_rows(tmp_path):
    store = _make(str(tmp_path / "d.zarr"), {}, n=300, shard_rows=256)
    for shard in range(store.n_shards):
        data, ids = _rows(store, shard)
        valid = np.ones(len(ids), bool)
        valid[::3] = False
        store.write_shard(shard, data, ids, valid=valid)
    total = sum(block.shape[0] for block in store)
    assert total == store.count_valid() == 300 - len(range(0, 256, 3)) - len(range(0, 44, 3))


def test_missing_and_corrupt_stores_raise_clear_errors(tmp_path):
    with pytest.raises(StoreNotFound, match="no embedding store"):
        EmbeddingStore.open(str(tmp_path / "nothing.zarr"))
    store = _make(str(tmp_path / "e.zarr"), {})
    store.write_shard(0, *_rows(store, 0))
    fs, path = filesystem(store.url)
    shard_files = [p for p in fs.find(join_url(path, "embedding")) if "/c/" in p]
    with open(shard_files[0], "r+b") as f:
        f.truncate(40)
    with pytest.raises(StoreCorrupt, match="truncated or corrupted"):
        store.read_shard(0)
    (tmp_path / "e.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreCorrupt, match="unreadable metadata"):
        EmbeddingStore.open(store.url)
    with pytest.raises(InputError):
        EmbeddingStore.create(str(tmp_path / "f.zarr"), n_rows=0, dim=4, chunk_rows=1, shard_rows=1)


@pytest.mark.parametrize("n", [1, 63, 64, 100, 255, 256, 257, 1000])
def test_create_reopens_at_every_size(root, n):
    """Smaller than a chunk, than a shard, not a multiple of either: create() again resumes."""
    url, options = root
    store = _make(join_url(url, f"n{n}.zarr"), options, n=n)
    assert store.shard_rows <= 256 and store.shard_rows % store.chunk_rows == 0
    assert store.shard_rows >= min(n, 256)
    store.write_shard(0, *_rows(store, 0))
    for _ in range(2):
        reopened = _make(store.url, options, n=n)
        assert (reopened.shard_rows, reopened.chunk_rows) == (store.shard_rows, store.chunk_rows)
        assert reopened.completed_shards() == {0}
    np.testing.assert_array_equal(reopened.read_shard(0)[0], _rows(store, 0)[0])
    with pytest.raises(StoreCorrupt, match="already exists"):
        _make(store.url, options, n=n + 1)


def test_two_creators_at_once_share_one_store_and_never_clear_its_rows(root):
    """Two runs of the same run key create its store at once: both get the store, and a row the
    first wrote is still there after the second's create (a create never clears a store)."""
    from concurrent.futures import ThreadPoolExecutor

    url, options = root
    for attempt in range(6):
        where = join_url(url, f"race-{attempt}.zarr")
        make = lambda _: EmbeddingStore.create(where, n_rows=300, dim=8, chunk_rows=64, shard_rows=128,  # noqa: E731
                                               storage_options=options)
        with ThreadPoolExecutor(2) as pool:
            stores = list(pool.map(make, range(2)))
        assert all(s.shape == (300, 8) and s.shard_rows == 128 for s in stores)
        rows = np.ones((128, 8), np.float32)
        stores[0].write_shard(0, rows, [f"r{i}" for i in range(128)])
        again = make(None)
        assert np.array_equal(again.read_shard(0)[0], rows)


def test_create_waits_for_a_store_being_created_and_refuses_one_left_incomplete(root, monkeypatch):
    """A group whose arrays are still being written is waited for (the other creator's store is
    opened, not cleared); one that stays without its arrays is corrupt and says so."""
    import threading

    import zarr

    from aniso.io import store as store_module
    from aniso.io.store import _create_arrays, zarr_store

    url, options = root
    where = join_url(url, "slow.zarr")
    group = zarr.open_group(zarr_store(where, options), mode="w-")
    late = threading.Timer(0.5, _create_arrays, (group, 300, 8, 64, 128, "float32", "zstd"))
    late.start()
    try:
        store = EmbeddingStore.create(where, n_rows=300, dim=8, chunk_rows=64, shard_rows=128,
                                      storage_options=options)
    finally:
        late.join()
    assert store.shape == (300, 8) and store.shard_rows == 128 and store.completed_shards() == set()

    monkeypatch.setattr(store_module, "_CONCURRENT_CREATE_S", 0.3)
    left = join_url(url, "left.zarr")
    zarr.open_group(zarr_store(left, options), mode="w-")
    with pytest.raises(StoreCorrupt, match="lacks array"):
        EmbeddingStore.create(left, n_rows=300, dim=8, chunk_rows=64, shard_rows=128, storage_options=options)
