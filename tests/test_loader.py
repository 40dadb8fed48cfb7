"""Loading published datasets for training: chunk-aware batches, torch workers, plain-zarr clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aniso.errors import ConfigError
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import open_published
from aniso.published.loader import chunks_for_rank
from aniso.published.writer import publish

N, D, CHUNK, SHARD = 1000, 8, 64, 256  # 16 chunks, the last one 40 rows; 4 shards, the last 232


def _publish(url: str, options: dict) -> tuple[np.ndarray, np.ndarray]:
    layout = DatasetLayout(url, "ds")
    store = EmbeddingStore.create(layout.substitutes("key0000000001"), n_rows=N, dim=D, chunk_rows=CHUNK,
                                  shard_rows=SHARD, storage_options=options)
    data = np.random.default_rng(3).normal(size=(N, D)).astype(np.float32)
    valid = np.ones(N, bool)
    valid[[5, 64, 999]] = False
    data[~valid] = 0
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, data[a:b], [f"id{i}" for i in range(a, b)], valid=valid[a:b])
    publish(layout, "key0000000001", gate_results={}, lineage={}, storage_options=options)
    return data, valid


@pytest.mark.parametrize("world_size", [1, 3])
def test_each_valid_row_once_per_epoch_across_ranks(tmp_path, world_size):
    data, valid = _publish(str(tmp_path), {})
    ds = open_published(str(tmp_path), "ds")
    seen: list[str] = []
    for rank in range(world_size):
        for ids, emb in ds.iter_batches(100, shuffle=True, seed=7, rank=rank, world_size=world_size):
            assert len(ids) == len(emb) <= 100
            rows = np.array([int(i[2:]) for i in ids])
            np.testing.assert_array_equal(emb, data[rows])  # ids stay with their rows
            seen.extend(ids)
    assert len(seen) == len(set(seen)) == int(valid.sum())
    assert set(seen) == {f"id{i}" for i in np.flatnonzero(valid)}


def test_shuffle_is_seeded_and_changes_with_the_epoch(tmp_path):
    _publish(str(tmp_path), {})
    ds = open_published(str(tmp_path), "ds")

    def order(**kw):
        return [i for ids, _ in ds.iter_batches(64, shuffle=True, **kw) for i in ids]

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    plain = [i for ids, _ in ds.iter_batches(64) for i in ids]
    assert plain == [f"id{i}" for i in range(N) if i not in (5, 64, 999)]
    with_invalid = [len(ids) for ids, _ in ds.iter_batches(300, only_valid=False, drop_last=True)]
    assert with_invalid == [300, 300, 300]


@pytest.mark.parametrize("world_size", [1, 2])
def test_global_shuffle_draws_every_batch_from_every_chunk(tmp_path, world_size):
    """``shuffle="global"``: each batch draws from (nearly) every chunk of the rank's epoch, where the
    buffered shuffle draws from a few; still each valid row once per epoch, seeded per epoch."""
    data, valid = _publish(str(tmp_path), {})
    ds = open_published(str(tmp_path), "ds")
    seen = []
    for rank in range(world_size):
        mine = set(chunks_for_rank(-(-N // CHUNK), shuffle=True, seed=1, epoch=0, rank=rank, world_size=world_size))
        spread, buffered = [], []
        for ids, emb in ds.iter_batches(64, shuffle="global", seed=1, rank=rank, world_size=world_size):
            rows = np.array([int(i[2:]) for i in ids])
            np.testing.assert_array_equal(emb, data[rows])
            spread.append(len(set(rows // CHUNK)))
            assert set(rows // CHUNK) <= mine
            seen.extend(ids)
        for ids, _ in ds.iter_batches(64, shuffle=True, seed=1, rank=rank, world_size=world_size):
            buffered.append(len({int(i[2:]) // CHUNK for i in ids}))
        # 64 draws over 16 (or 8) chunks reach nearly all of them (seeded: no flake); a 4-chunk
        # buffer's batches draw from its 4 chunks plus the few rows carried over from earlier ones
        assert min(spread[:-1]) >= len(mine) - 1, spread
        if world_size == 1:
            assert sorted(buffered)[len(buffered) // 2] + 3 <= min(spread[:-1]), (spread, buffered)
    assert sorted(seen) == sorted(f"id{i}" for i in np.flatnonzero(valid))
    order = [list(ids) for ids, _ in ds.iter_batches(64, shuffle="global", seed=1)]
    assert order == [list(ids) for ids, _ in ds.iter_batches(64, shuffle="global", seed=1)]
    assert order != [list(ids) for ids, _ in ds.iter_batches(64, shuffle="global", seed=1, epoch=1)]
    with pytest.raises(ConfigError, match="shuffle must be True or False or 'global'"):
        ds.iter_batches(64, shuffle="everything")


def test_ids_are_python_strings(tmp_path):
    """``ds.ids`` is a list-like of Python ``str`` (zarr's own StringDType refuses ``astype(str)``)."""
    _publish(str(tmp_path), {})
    ds = open_published(str(tmp_path), "ds")
    ids = ds.ids
    assert type(ids[0]) is str and ids[0] == "id0" and ids.astype(str)[3] == "id3"
    assert ids.tolist()[:2] == ["id0", "id1"] and all(type(i) is str for i in ids.tolist())
    batch_ids, _ = next(iter(ds.iter_batches(10)))
    assert type(batch_ids[0]) is str and batch_ids.astype(str).dtype.kind == "U"


def test_bad_rank_is_a_config_error():
    with pytest.raises(ConfigError, match="rank 2"):
        chunks_for_rank(10, shuffle=False, seed=0, epoch=0, rank=2, world_size=2)
    assert sorted(np.concatenate([chunks_for_rank(10, shuffle=True, seed=0, epoch=0, rank=r, world_size=4)
                                  for r in range(4)]).tolist()) == list(range(10))


@pytest.mark.slow
def test_torch_dataloader_two_workers_over_s3(s3_root):
    torch = pytest.importorskip("torch")
    from aniso.published.torch_loader import PublishedIterableDataset

    url, options = s3_root
    data, valid = _publish(url, options)
    ds = PublishedIterableDataset(url, "ds", batch_size=128, storage_options=options, shuffle=True, seed=0)
    open_published(url, "ds", storage_options=options).embedding[:10]  # the parent has used s3 too
    # spawned, persistent workers: each opens the store itself and reshuffles every pass
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn",
                                         persistent_workers=True)
    orders = []
    for _ in range(2):
        seen = []
        for ids, emb in loader:
            assert isinstance(emb, torch.Tensor) and emb.shape == (len(ids), D)
            np.testing.assert_array_equal(emb.numpy(), data[[int(i[2:]) for i in ids]])
            seen.extend(ids)
        assert len(seen) == len(set(seen)) == int(valid.sum())
        orders.append(seen)
    assert orders[0] != orders[1]
    del loader


_CLIENT = textwrap.dedent('''
    import json, sys
    import numpy as np, zarr
    import importlib.util
    assert importlib.util.find_spec("aniso") is None, sys.path  # no aniso code reachable at all
    root, dataset = sys.argv[1], sys.argv[2]
    base = f"{root}/{dataset}/published"
    version = json.load(open(f"{base}/LATEST"))["version"]
    manifest = json.load(open(f"{base}/{version}/manifest.json"))
    group = zarr.open_group(f"{base}/{version}/{manifest['path']}", mode="r")
    emb, ids, valid = group["embedding"][:], group["id"][:], group["valid"][:]
    assert emb.shape == (manifest["n_rows"], manifest["dim"])
    assert int(valid.sum()) == manifest["valid_rows"]
    import hashlib
    for shard in manifest["shards"]:
        a, b = shard["start"], shard["stop"]
        h = hashlib.sha256(np.ascontiguousarray(emb[a:b]).tobytes())
        h.update("\\x1f".join(str(i) for i in ids[a:b]).encode())
        assert h.hexdigest() == shard["sha256"], shard
    print(json.dumps({"rows": int(emb.shape[0]), "sum": float(emb[valid].sum()), "first": str(ids[0]),
                      "modules": sorted(m for m in sys.modules if m.startswith("aniso"))}))
''')


def test_plain_client_without_aniso_reads_and_checks(tmp_path):
    data, valid = _publish(str(tmp_path / "root"), {})
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    import zarr

    # -I: isolated (no cwd, no PYTHONPATH, no user site); -S skips site, so the editable aniso
    # install's .pth never runs; the dependencies' site-packages is added by hand.
    site = os.path.dirname(os.path.dirname(os.path.abspath(zarr.__file__)))
    code = f"import sys; sys.path.append({site!r}); sys.argv = sys.argv[:1] + {[str(tmp_path / 'root'), 'ds']!r}; " \
           f"exec(open({str(script)!r}).read())"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["modules"] == [] and result["rows"] == N and result["first"] == "id0"
    assert result["sum"] == pytest.approx(float(data[valid].sum()), rel=1e-5)


def test_torch_dataset_in_process_follows_set_epoch(tmp_path):
    pytest.importorskip("torch")
    from aniso.published.torch_loader import PublishedIterableDataset

    _publish(str(tmp_path), {})
    ds = PublishedIterableDataset(str(tmp_path), "ds", batch_size=50, shuffle=True, seed=3)

    def order(epoch):
        ds.set_epoch(epoch)
        return [i for ids, _ in ds for i in ids]

    assert order(1) == order(1) != order(2)
    assert sorted(order(0)) == sorted(order(5))


def test_all_valid_manifest_skips_the_valid_array(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    store = EmbeddingStore.create(layout.substitutes("key0000000002"), n_rows=300, dim=D, chunk_rows=CHUNK,
                                  shard_rows=SHARD, storage_options={})
    data = np.random.default_rng(4).normal(size=(300, D)).astype(np.float32)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, data[a:b], [f"id{i}" for i in range(a, b)])
    publish(layout, "key0000000002", gate_results={}, lineage={}, storage_options={})
    ds = open_published(str(tmp_path), "ds")
    assert ds.all_valid
    # the valid array is not read: deleting it changes nothing for a reader that trusts the manifest
    import shutil

    shutil.rmtree(os.path.join(ds.store.url, "valid"))
    got = {i: row for ids, emb in ds.iter_batches(64, shuffle=True) for i, row in zip(ids, emb)}
    assert len(got) == 300
    np.testing.assert_array_equal(np.stack([got[f"id{i}"] for i in range(300)]), data)
    # with invalid rows in the manifest the flag is off and only valid rows come back
    _publish(str(tmp_path / "other"), {})
    assert not open_published(str(tmp_path / "other"), "ds").all_valid


@pytest.mark.parametrize("drop_last", [False, True])
def test_published_dataloader_batches_like_the_dataset(root, drop_last):
    """Blocks cross from the workers once per slot; batches, rows and values are the dataset's."""
    torch = pytest.importorskip("torch")
    from aniso.published.torch_loader import PublishedDataLoader, PublishedIterableDataset

    url, options = root
    data, valid = _publish(url, options)
    ds = PublishedIterableDataset(url, "ds", batch_size=48, storage_options=options, shuffle=True, seed=1,
                                  drop_last=drop_last)
    # 3 batches per block; 10 slots' worth of blocks per worker, so every slot is reused
    loader = PublishedDataLoader(ds, num_workers=2, transfer_rows=150)
    held, orders = [], []
    for _ in range(3):
        seen = []
        for ids, emb in loader:
            assert isinstance(emb, torch.Tensor) and emb.shape == (len(ids), D)
            assert len(ids) == 48 or not drop_last
            held.append((ids, emb))  # a training loop may keep batches: a reused block must not change them
            seen.extend(ids)
        assert len(seen) == len(set(seen))
        if drop_last:  # each worker drops at most its last short batch
            assert int(valid.sum()) - 2 * 47 <= len(seen) <= int(valid.sum())
        else:
            assert sorted(seen) == sorted(f"id{i}" for i in np.flatnonzero(valid))
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2]
    for ids, emb in held:
        np.testing.assert_array_equal(emb.numpy(), data[[int(i[2:]) for i in ids]])
    del loader


def test_published_dataloader_survives_an_epoch_stopped_early(tmp_path):
    """Blocks in flight when an epoch stops are dropped; the next epoch is whole and correct."""
    pytest.importorskip("torch")
    from aniso.published.torch_loader import PublishedDataLoader, PublishedIterableDataset

    data, valid = _publish(str(tmp_path), {})
    ds = PublishedIterableDataset(str(tmp_path), "ds", batch_size=32, shuffle=True)
    loader = PublishedDataLoader(ds, num_workers=2, transfer_rows=64)
    for stop_after in (1, 3, 7):
        for n, _ in enumerate(loader):
            if n == stop_after:
                break
        seen = {}
        for ids, emb in loader:
            for i, row in zip(ids, emb.numpy()):
                seen[i] = row
        assert sorted(seen) == sorted(f"id{i}" for i in np.flatnonzero(valid))
        for i, row in seen.items():
            np.testing.assert_array_equal(row, data[int(i[2:])])
    del loader


def test_block_ring_reuses_only_acknowledged_blocks():
    torch = pytest.importorskip("torch")
    from aniso.published.torch_loader import _BlockRing

    acks = torch.zeros(1, dtype=torch.int64)
    cached = torch.full((1, 2), -1, dtype=torch.int64)
    ring = _BlockRing(acks, cached, worker=0, wait_s=0.01)
    first = ring((4, 3), np.dtype(np.float32))
    first[...] = 1
    msg = ring.message(["a"] * 4, first)
    assert msg[1] is not None and msg[2:] == (0, 0, 0, 0, 4)  # block sent with (worker, slot, gen, seq, rows)
    ring((4, 3), np.dtype(np.float32))
    # slot 0 again, block 0 not acknowledged: a fresh block, the old one untouched
    third = ring((4, 3), np.dtype(np.float32))
    assert third.ctypes.data != first.ctypes.data and np.all(first == 1)
    msg = ring.message(["a"] * 4, third)
    assert msg[1] is not None and msg[4] == 2  # a new generation is sent again
    cached[0, 0] = 2
    acks[0] = 3  # blocks 0..2 copied out
    ring((4, 3), np.dtype(np.float32))
    fifth = ring((2, 3), np.dtype(np.float32))  # slot 0, acknowledged: reused, smaller view
    assert fifth.ctypes.data == third.ctypes.data
    msg = ring.message(["a"] * 2, fifth)
    assert msg[1] is None and msg[2:] == (0, 0, 2, 4, 2)  # the main process holds generation 2
