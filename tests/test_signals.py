"""Stopping a run (issue: an operator can stop what runs): a real ``aniso`` CLI subprocess.

* a Dask scheduler without workers: exit 1 with one line after ``cluster.wait_timeout``;
* SIGTERM or SIGINT at any stage: the whole process tree ends within 10 s, one line, nothing
  published half-way, and the same command then resumes and publishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

CLI = Path(sys.executable).with_name("aniso")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tree via /proc")]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming an API URL
    return env


def _inputs(tmp_path: Path, gap) -> list[str]:
    # a larger input than the gap fixture alone, so that the stages take a few seconds
    rng = np.random.default_rng(0)
    text = np.concatenate([gap.text] * 8) + rng.normal(scale=1e-3, size=(8 * len(gap.text), gap.text.shape[1]))
    np.save(tmp_path / "text.npy", text.astype(np.float32))
    np.save(tmp_path / "image.npy", np.concatenate([gap.image] * 8))
    return [str(CLI), "produce", "store", "--text", "text.npy", "--image", "image.npy", "--dataset", "sig",
            "--profile", "ci", "--method", "realign", "--set", "store.shard_rows=1024", "--set", "store.chunk_rows=256"]


def test_no_worker_exits_one_with_one_line(tmp_path, gap):
    from distributed import LocalCluster

    args = _inputs(tmp_path, gap)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", scheduler_port=0,
                      dashboard_address=None) as cluster:
        started = time.monotonic()
        result = subprocess.run([*args, "--set", f"cluster.address={cluster.scheduler_address}",
                                 "--set", "cluster.wait_timeout=5"],
                                cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and "no Dask worker joined the scheduler" in lines[0] and "cluster.wait_timeout" in lines[0], \
        result.stderr[-3000:]
    assert took < 120, took
    assert not (tmp_path / "store" / "sig" / "published" / "LATEST").exists()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.parametrize("signum, when", [(signal.SIGTERM, "progress: statistics"), (signal.SIGINT, "start"),
                                          (signal.SIGTERM, "progress: apply")])
def test_signal_ends_the_tree_in_one_line_and_the_rerun_resumes(tmp_path, gap, signum, when):
    args = [*_inputs(tmp_path, gap), "--set", "cluster.processes=true"]  # worker processes in the tree
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            for p in _tree(proc.pid):
                seen.setdefault(p.pid, p)
            if when == "start" and len(seen) >= 2 or when != "start" and when in log.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the signal: " + log.read_text()[-2000:]
        for p in _tree(proc.pid):
            seen.setdefault(p.pid, p)
        sent = time.monotonic()
        os.kill(proc.pid, signum)
        proc.wait(timeout=30)
        left = _alive(list(seen.values()))
        deadline = sent + 10
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _alive(left)
        took = time.monotonic() - sent
    finally:
        for p in _alive(list(seen.values())):
            p.kill()  # only processes of this test's own CLI
    text = log.read_text()
    assert not left and took < 10, (took, [p.pid for p in left])
    assert proc.returncode == 128 + signum
    stopped = [line for line in text.splitlines() if "aniso:" in line or "Traceback" in line or "Error" in line]
    assert len(stopped) == 1 and f"stopped by {signal.Signals(signum).name}" in stopped[0], text[-3000:]
    if when != "start":
        assert len(seen) >= 3, "the tree had the CLI, its child, the server and the Dask workers"
    published = tmp_path / "store" / "sig" / "published"
    if (published / "LATEST").exists():  # only ever a complete version
        version = json.loads((published / "LATEST").read_text())["version"]
        assert (published / version / "manifest.json").exists()
    rerun = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    verify = subprocess.run([str(CLI), "verify", "store", "--dataset", "sig"], cwd=tmp_path, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stderr[-2000:]


def test_a_stopped_run_shows_as_cancelled_on_an_external_prefect_server(tmp_path, gap, prefect_server):
    """With ``PREFECT_API_URL`` of a server that outlives the run, a killed run cannot report its
    end itself: the ``aniso`` process sets it to Cancelled there, within the 10 s."""
    import httpx

    api_url, env, procs = prefect_server
    args = _inputs(tmp_path, gap)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and "progress: statistics" not in log.read_text():
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the signal: " + log.read_text()[-2000:]
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and took < 10, (proc.returncode, took, log.read_text()[-2000:])
    runs = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=30).json()
    produce = [r for r in runs if r["name"].startswith("produce-")]
    assert len(produce) == 1, [(r["name"], r["state_type"]) for r in runs]
    assert produce[0]["state_type"] == "CANCELLED", produce[0]["state"]
    assert "stopped by SIGTERM" in produce[0]["state"]["message"]
