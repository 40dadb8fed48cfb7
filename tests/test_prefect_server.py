"""A real Prefect server: a served deployment of ``produce``, triggered through the API, runs its
tasks on a Dask cluster that the test started at a known address, and aniso's own log lines are
visible through the API.

Everything runs as separate processes, as in production: ``prefect server start`` on a free
loopback port (PREFECT_HOME in a temporary folder), a Dask scheduler with workers, and
``python -m aniso.flows.deployments`` serving the deployment. Slow on a 2-core machine (minutes),
so every wait is generous.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aniso.testing.ports import free_port

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600


def _env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_API_REQUEST_TIMEOUT="120",
        GX_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _wait(what: str, check, timeout: float, procs: dict[str, tuple[subprocess.Popen, Path]]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                     + log.read_text(errors="replace")[-4000:])
        value = check()
        if value:
            return value
        time.sleep(2)
    logs = "\n".join(f"--- {n}\n{log.read_text(errors='replace')[-3000:]}" for n, (_, log) in procs.items())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


@pytest.fixture
def prefect_server(tmp_path):
    """``prefect server start`` on a free loopback port; yields ``(api_url, env, procs)``."""
    import httpx

    home = tmp_path / "prefect-home"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = tmp_path / "server.log"
    proc = _start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  _env(home), log)
    procs = {"prefect server": (proc, log)}

    def healthy() -> bool:
        try:
            return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait("the Prefect server", healthy, START_TIMEOUT_S, procs)
        yield api_url, _env(home, api_url), procs
    finally:
        _stop(proc)


DASK_SCRIPT = """
import sys, time
from distributed import LocalCluster
cluster = LocalCluster(scheduler_port=int(sys.argv[1]), host="127.0.0.1", n_workers=2, threads_per_worker=1,
                       processes=False, dashboard_address=None)
print("scheduler at", cluster.scheduler_address, flush=True)
while True:
    time.sleep(60)
"""


def _scheduler_task_keys(address: str) -> list[str]:
    from distributed import Client

    def keys(dask_scheduler=None):
        seen = {str(entry[0]) for entry in dask_scheduler.transition_log}
        return sorted(seen | {str(p) for p in dask_scheduler.task_prefixes})

    with Client(address, timeout=60) as client:
        return client.run_on_scheduler(keys)


def _api(api_url, coro_fn):
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api_url) as client:
            return await coro_fn(client)

    return asyncio.run(go())


def test_served_deployment_runs_on_the_configured_dask_cluster(prefect_server, tmp_path, gap):
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, LogFilter,
                                                LogFilterFlowRunId)
    from prefect.client.schemas.objects import StateType

    api_url, env, procs = prefect_server
    np.save(tmp_path / "text.npy", gap.text)
    np.save(tmp_path / "image.npy", gap.image)
    dask_port = free_port()
    address = f"tcp://127.0.0.1:{dask_port}"
    dask_log = tmp_path / "dask.log"
    dask = _start([sys.executable, "-c", DASK_SCRIPT, str(dask_port)], env, dask_log)
    procs["dask"] = (dask, dask_log)
    serve_log = tmp_path / "serve.log"
    serve = _start([
        sys.executable, "-m", "aniso.flows.deployments", "--text", str(tmp_path / "text.npy"),
        "--image", str(tmp_path / "image.npy"), "--profile", "ci", "--name", "served",
        "--set", f"storage.root={tmp_path / 'root'}", "--set", "storage.dataset=served",
        "--set", "method.name=realign", "--set", f"cluster.address={address}",
    ], env, serve_log)
    procs["serve"] = (serve, serve_log)
    try:
        _wait("the Dask scheduler", lambda: "scheduler at" in dask_log.read_text(), START_TIMEOUT_S, procs)

        async def deployment(client):
            try:
                return await client.read_deployment_by_name("produce/served")
            except Exception:  # noqa: BLE001 - not registered yet
                return None

        found = _wait("the served deployment", lambda: _api(api_url, deployment), START_TIMEOUT_S, procs)
        assert found.entrypoint == "aniso.flows.produce.produce"

        async def trigger(client):
            return await client.create_flow_run_from_deployment(found.id)

        flow_run = _api(api_url, trigger)

        async def state(client):
            run = await client.read_flow_run(flow_run.id)
            return run if run.state and run.state.is_final() else None

        finished = _wait("the flow run", lambda: _api(api_url, state), RUN_TIMEOUT_S, procs)
        assert finished.state.type == StateType.COMPLETED, (finished.state, serve_log.read_text()[-4000:])

        async def everything(client):
            children = await client.read_flow_runs()
            ids = [r.id for r in children]
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[finished.id])))
            return children, logs, artifacts

        def complete():
            fetched = _api(api_url, everything)
            last = [log for log in fetched[1] if log.flow_run_id == finished.id and log.message.startswith("stage publish: ")]
            return fetched if last else None

        # the run's last log lines reach the API in the batch after its state turned final
        runs, logs, artifacts = _wait("the run's last log lines", complete, 60, procs)
    finally:
        _stop(serve)
        keys = _scheduler_task_keys(address) if dask.poll() is None else []
        _stop(dask)

    # the stages ran in the deployment's own flow run (no subflow), on the cluster the settings named
    assert {r.name.split("-")[0] for r in runs} >= {"produce"}
    assert not any(r.parent_task_run_id for r in runs), [r.name for r in runs]
    mine = [log for log in logs if log.flow_run_id == finished.id]
    assert any(log.message.startswith("run key ") for log in mine)
    for stage in ("inputs", "statistics", "fit", "apply", "gates", "publish"):
        assert any(log.message.startswith(f"stage {stage}: ") for log in mine), (stage, sorted({m.name for m in mine}))
    kinds = {a.key or a.type for a in artifacts}
    assert {"aniso-report", "aniso-published", "aniso-gates"} <= kinds and "progress" in {a.type for a in artifacts}, kinds
    assert any("apply" in k.replace("-", "_") for k in keys), keys[:40]
    assert any("publish" in k for k in keys), keys[:40]
    # the gate stage runs in the flow's own process (where its libraries were preloaded)
    assert not any("gate" in k for k in keys), keys[:40]
    # aniso's own log lines reached the server: from the flow's process and from the Dask workers
    names = {log.name for log in logs}
    assert "aniso.flows.produce" in names, sorted(names)
    assert any(log.message.startswith("run key ") for log in logs)
    assert any(n.startswith("aniso.") and n != "aniso.flows.produce" for n in names), sorted(names)
    assert (tmp_path / "root" / "served" / "published" / "LATEST").exists()
