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
import sys

import numpy as np
import pytest

from aniso.testing.ports import free_port
from aniso.testing.processes import start_logged, stop_group, wait_for

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600


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
    dask = start_logged([sys.executable, "-c", DASK_SCRIPT, str(dask_port)], env, dask_log)
    procs["dask"] = (dask, dask_log)
    serve_log = tmp_path / "serve.log"
    serve = start_logged([
        sys.executable, "-m", "aniso.flows.deployments", "--text", str(tmp_path / "text.npy"),
        "--image", str(tmp_path / "image.npy"), "--profile", "ci", "--name", "served",
        "--set", f"storage.root={tmp_path / 'root'}", "--set", "storage.dataset=served",
        "--set", "method.name=realign", "--set", f"cluster.address={address}",
    ], env, serve_log)
    procs["serve"] = (serve, serve_log)
    try:
        wait_for("the Dask scheduler", lambda: "scheduler at" in dask_log.read_text(), START_TIMEOUT_S, procs)

        async def deployment(client):
            try:
                return await client.read_deployment_by_name("produce/served")
            except Exception:  # noqa: BLE001 - not registered yet
                return None

        found = wait_for("the served deployment", lambda: _api(api_url, deployment), START_TIMEOUT_S, procs)
        assert found.entrypoint == "aniso.flows.produce.produce"

        async def trigger(client):
            return await client.create_flow_run_from_deployment(found.id)

        flow_run = _api(api_url, trigger)

        async def state(client):
            run = await client.read_flow_run(flow_run.id)
            return run if run.state and run.state.is_final() else None

        finished = wait_for("the flow run", lambda: _api(api_url, state), RUN_TIMEOUT_S, procs)
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
        runs, logs, artifacts = wait_for("the run's last log lines", complete, 60, procs)
    finally:
        stop_group(serve)
        keys = _scheduler_task_keys(address) if dask.poll() is None else []
        stop_group(dask)

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
