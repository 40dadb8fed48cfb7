"""The preflight's probe on the Dask workers: the flow's process has the credentials, a worker
does not; the run stops in one line naming the worker and the missing variable (issue: a raw
botocore NoCredentialsError traceback came from a worker after the preflight had passed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aniso._fs import join_url, open_url
from aniso.stages.preflight import probe_here, storage_variables
from aniso.testing.ports import free_port

CLI = Path(sys.executable).with_name("aniso")


def _put(url: str, array: np.ndarray, options: dict) -> None:
    with open_url(url, "wb", options) as f:
        np.save(f, array)


def _no_credentials(monkeypatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


@pytest.mark.s3
def test_probe_names_the_missing_variables(s3_root, gap, tmp_path, monkeypatch):
    url, options = s3_root
    for name in ("text", "image"):
        _put(join_url(url, f"{name}.npy"), getattr(gap, name), options)
    args = (join_url(url, "text.npy"), join_url(url, "image.npy"), join_url(url, "out"), "ds", options)
    expected = storage_variables()
    assert "AWS_ACCESS_KEY_ID" in expected and probe_here(*args, expected) is None
    _no_credentials(monkeypatch, tmp_path)
    reason = probe_here(*args, expected)
    assert reason is not None and "\n" not in reason and "text input" in reason
    assert "lacks AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in reason, reason


@pytest.mark.s3
@pytest.mark.slow
def test_worker_without_credentials_stops_the_run_in_one_line(s3_root, gap, tmp_path):
    url, options = s3_root
    for name in ("text", "image"):
        _put(join_url(url, f"{name}.npy"), getattr(gap, name), options)
    address = f"tcp://127.0.0.1:{free_port()}"
    worker_env = {k: v for k, v in os.environ.items()
                  if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    worker_env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                   "--no-dashboard"], env=worker_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    try:
        result = subprocess.run(
            [str(CLI), "produce", join_url(url, "out"), "--text", join_url(url, "text.npy"),
             "--image", join_url(url, "image.npy"), "--dataset", "creds", "--profile", "ci", "--method", "realign",
             "--set", f"storage.storage_options.endpoint_url={options['endpoint_url']}",
             "--set", f"cluster.address={address}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the process groups this test started
                proc.wait(30)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "preflight on Dask worker tcp://127.0.0.1:" in errors[0] and "AWS_ACCESS_KEY_ID" in errors[0], errors[0]
    assert "NoCredentialsError" in errors[0] or "credentials" in errors[0].lower()
