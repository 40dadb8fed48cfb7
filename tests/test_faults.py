"""Fault tolerance: storage outages, lost workers, concurrent runs, corrupted stores, secrets."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import dask
import numpy as np
import pytest
from test_produce import _inputs, _settings, run

from aniso._fs import filesystem
from aniso.errors import StoreCorrupt
from aniso.io.layout import DatasetLayout
from aniso.published.dataset import open_published, read_latest
from aniso.stages import apply as apply_stage

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _reference(tmp_path, gap):
    url = str(tmp_path / "reference")
    run(_settings(url, {}), _inputs(url, {}, gap))
    return open_published(url, "t")


@pytest.mark.s3
def test_s3_outage_during_apply_is_retried(tmp_path, gap, monkeypatch):
    """The S3 server stops in the middle of apply and comes back: retries finish the run."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Credentials come from the environment (conftest): settings refuse them in storage_options.
    options = {"endpoint_url": f"http://{host}:{port}",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    url = f"s3://{bucket}/root"
    settings = _settings(url, options)
    paths = _inputs(url, options, gap)
    real_apply = apply_stage.apply_shard
    state = {"server": server, "stopped": False}

    def apply_with_outage(model_url, text_store_url, subs_url, shard, storage_options):
        if shard == 1 and not state["stopped"]:
            state["stopped"] = True
            state["server"].stop()
            restart = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            state["server"] = restart
            threading.Timer(2.0, restart.start).start()
        return real_apply(model_url, text_store_url, subs_url, shard, storage_options)

    monkeypatch.setattr(apply_stage, "apply_shard", apply_with_outage)
    try:
        run(settings, paths)
        assert state["stopped"]
        published = open_published(url, "t", storage_options=options)
        published.verify()
        reference = _reference(tmp_path, gap)
        assert published.manifest["shards"] == reference.manifest["shards"]
    finally:
        time.sleep(2.5)
        state["server"].stop()


def test_lost_dask_worker_is_survived(tmp_path, gap, monkeypatch):
    """A worker dies mid-task: Dask reschedules the shard elsewhere; output is identical."""
    from distributed import LocalCluster, get_worker

    real_apply = apply_stage.apply_shard
    killed = threading.Event()

    def apply_then_die(model_url, text_store_url, subs_url, shard, storage_options):
        if shard == 1 and not killed.is_set():
            killed.set()
            worker = get_worker()
            worker.loop.add_callback(worker.close)
            time.sleep(10)  # a dead worker never returns its result
        return real_apply(model_url, text_store_url, subs_url, shard, storage_options)

    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        url = str(tmp_path / "killed")
        settings = _settings(url, {}, **{"cluster.address": cluster.scheduler_address})
        monkeypatch.setattr(apply_stage, "apply_shard", apply_then_die)
        cluster.scale(3)
        run(settings, _inputs(url, {}, gap))
    assert killed.is_set()
    assert open_published(url, "t").manifest["shards"] == _reference(tmp_path, gap).manifest["shards"]


def test_concurrent_runs_leave_latest_complete(tmp_path, gap):
    url = str(tmp_path / "concurrent")
    paths = _inputs(url, {}, gap)
    outcomes: list[object] = []

    def go(seed):
        try:
            outcomes.append(run(_settings(url, {}, **{"fit.seed": seed}), paths))
        except Exception as exc:  # one may fail cleanly; that is allowed
            outcomes.append(exc)

    threads = [threading.Thread(target=go, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(isinstance(o, dict) for o in outcomes), outcomes
    pointer = read_latest(DatasetLayout(url, "t"))
    published = open_published(url, "t")
    published.verify()
    assert pointer["run_key"] in {o["run_key"] for o in outcomes if isinstance(o, dict)}


def test_corrupted_store_gives_a_clear_error(tmp_path, gap):
    """An aniso Zarr store given as input (used as it is) with a damaged chunk: a clear error
    naming the store, and the previous publication untouched. (``.npy`` inputs are read in place
    and have no Zarr copy to damage.)"""
    from aniso.io.store import EmbeddingStore

    url = str(tmp_path / "corrupt")
    paths = _inputs(url, {}, gap)
    text_url = str(tmp_path / "input" / "text.zarr")
    store = EmbeddingStore.create(text_url, n_rows=len(gap.text), dim=gap.text.shape[1], chunk_rows=256,
                                  shard_rows=1024)
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        store.write_shard(shard, gap.text[start:stop].astype(np.float32), [f"t{i}" for i in range(start, stop)])
    paths = {**paths, "text": text_url}
    run(_settings(url, {}), paths)
    before = read_latest(DatasetLayout(url, "t"))
    fs, base = filesystem(text_url)
    shard = sorted(p for p in fs.find(base) if "/text.zarr/embedding/c/" in p)[0]
    with open(shard, "r+b") as f:
        f.truncate(100)
    with pytest.raises(StoreCorrupt, match="text.zarr are unreadable"):
        run(_settings(url, {}, **{"method.name": "centroid", "gates.centroid_residual_max": 1.0}), paths)
    assert read_latest(DatasetLayout(url, "t")) == before


@pytest.mark.s3
def test_secrets_never_reach_files_or_logs(moto_server, gap, monkeypatch, caplog):
    """Credentials from the standard AWS variables work and are written nowhere."""
    import s3fs

    secret = f"SECRET{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"secret-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    url = f"s3://{bucket}/root"
    caplog.set_level(logging.DEBUG, logger="aniso")
    run(_settings(url, {}), _inputs(url, {}, gap))
    fs = s3fs.S3FileSystem()
    files = fs.find(bucket)
    assert any(f.endswith("manifest.json") for f in files)
    for path in files:
        assert secret.encode() not in fs.cat(path), path
    assert secret not in caplog.text
    s3fs.S3FileSystem.clear_instance_cache()
