"""Helpers shared by the flows: the Dask task runner from settings, and shard fan-out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dask
from prefect import Task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from aniso._fs import resolve_env_refs
from aniso.config import ClusterSettings
from aniso.errors import ClusterUnavailable, ConfigError
from aniso.progress import ProgressEvent, format_event, report

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between two updates of a stage's Prefect progress artifact (start and end always).
ARTIFACT_INTERVAL = 2.0


def make_task_runner(cluster: ClusterSettings) -> SettingsTaskRunner:
    """A DaskTaskRunner: an existing scheduler when ``address`` is set, else a temporary cluster."""
    if cluster.address:  # connecting gives up after cluster.wait_timeout, as waiting for workers does
        return SettingsTaskRunner(address=cluster.address, client_kwargs={"timeout": cluster.wait_timeout})
    cluster_class = cluster.cluster_class or "distributed.LocalCluster"
    kwargs: dict[str, Any] = {}
    if cluster_class.rsplit(".", 1)[-1] in ("LocalCluster", "LocalCUDACluster"):
        # Only the local clusters take these; KubeCluster/SLURMCluster size themselves from
        # their own specs in cluster_kwargs.
        kwargs = {"n_workers": cluster.n_workers, "threads_per_worker": cluster.threads_per_worker}
        if cluster.dashboard:
            kwargs["dashboard_address"] = cluster.dashboard
        else:
            # No dashboard; the scheduler's own HTTP endpoint (health, metrics) on a free
            # loopback port, so a busy :8787 never produces a warning.
            kwargs["dashboard_address"] = None
            kwargs["scheduler_kwargs"] = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
        if cluster_class.endswith(".LocalCluster"):
            kwargs["processes"] = cluster.processes
        # The workers' statistical profiler (it feeds only the dashboard's profile page) calls
        # sys._current_frames() every 10 ms; on Python 3.11 before 3.11.9 that can deadlock the
        # process against a thread that is exiting (CPython gh-106883: the runtime's head lock
        # and the GIL taken in opposite orders), which hung runs whose workers share the flow's
        # process. Nanny-started workers receive this configuration too.
        dask.config.set({"distributed.worker.profile.enabled": False})
    # a secret a cluster needs (e.g. its workers' env) is a ${ENV_VAR} in the settings: read here
    kwargs.update(resolve_env_refs(cluster.cluster_kwargs))
    return SettingsTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)


class SettingsTaskRunner(DaskTaskRunner):
    """The ``produce`` flow's own task runner: a DaskTaskRunner that takes its cluster from the
    flow run's settings.

    A flow's task runner is fixed when the flow is defined, but the cluster is a setting of each
    run (a deployment's ``settings`` parameter). DaskTaskRunner creates its client (and a
    temporary cluster) only on first use, so the flow body calls :func:`use_settings_cluster`
    before submitting anything, and every stage runs in the flow run itself: its logs, progress
    and artifacts belong to the run a deployment or the CLI started (no subflow).
    """

    def __exit__(self, *args: Any) -> None:
        if self._client is not None and self.address:
            _release_worker_services(self._client)
        super().__exit__(*args)

    def configure(self, cluster: ClusterSettings) -> bool:
        """Take ``cluster``'s scheduler or cluster class; False when a client already exists."""
        if self._client is not None:
            return False
        template = make_task_runner(cluster)
        for name in ("address", "cluster_class", "resolved_cluster_class", "cluster_kwargs", "adapt_kwargs",
                     "client_kwargs"):
            setattr(self, name, getattr(template, name))
        return True


def _drain_prefect_services(timeout: float = 10.0) -> None:
    """On a Dask worker: send Prefect's queued events and logs, then stop those services."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        for service in (EventsWorker, APILogWorker):
            try:
                service.drain_all(timeout=timeout)
            except Exception:  # noqa: BLE001 - best effort, on a worker that keeps running
                pass

    # Client.run calls this on the worker's event loop, where drain_all would only return a
    # coroutine (Prefect's sync/async dispatch): a thread of its own gets the blocking drain
    thread = threading.Thread(target=drain, name="aniso-drain-prefect", daemon=True)
    thread.start()
    thread.join(2 * timeout + 5)


def _release_worker_services(client: Any) -> None:
    """Drain and stop Prefect's event and log services on every worker of an external cluster.

    Workers of a scheduler the run did not start outlive it. Their Prefect services are bound to
    the run's API (for a CLI run, its temporary server, gone once the command exits): events and
    logs still queued there, or sent there by the next run's tasks, failed for minutes with an
    ERROR line each. Draining while the API still answers sends them; stopping the services
    makes the next run's tasks start new ones on that run's API.
    """
    try:
        client.run(_drain_prefect_services, wait=True)
    except Exception as exc:  # noqa: BLE001 - the run's result stands; this only spares the workers' logs
        logger.debug("could not drain the workers' Prefect services: %s", exc)


def use_settings_cluster(cluster: ClusterSettings) -> str:
    """Point the running flow's :class:`SettingsTaskRunner` at ``cluster``; what it runs on, in words.

    A flow given another task runner (``produce.with_options(task_runner=...)``) keeps it.
    """
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if isinstance(runner, SettingsTaskRunner) and runner.configure(cluster):
        return cluster.address or cluster.cluster_class or "distributed.LocalCluster"
    return f"the flow's own {type(runner).__name__}"


class StageProgress:
    """Progress of one stage in rows: :func:`aniso.progress.report` plus a Prefect progress
    artifact with the same figures (rows done, rows/s, ETA) when running inside a flow."""

    def __init__(self, stage: str, total_rows: int) -> None:
        self.stage, self.total, self.done = stage, int(total_rows), 0
        self._artifact = None
        self._last = 0.0
        if FlowRunContext.get() is not None:
            try:
                self._artifact = create_progress_artifact(progress=0.0, description=f"{stage}: starting")
            except Exception as exc:  # noqa: BLE001 - progress must never fail a run
                logger.debug("no progress artifact for %s: %s", stage, exc)
        self._emit(report(stage, 0, self.total))

    def advance(self, rows: int) -> None:
        """Count ``rows`` more rows as done."""
        self.done = min(self.done + int(rows), self.total)
        self._emit(report(self.stage, self.done, self.total))

    def finish(self) -> None:
        """Mark the stage complete (every row done)."""
        if self.done < self.total or self.total == 0:
            self.done = self.total
            self._emit(report(self.stage, self.done, self.total))

    def _emit(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if self._artifact is None or (not event.finished and now - self._last < ARTIFACT_INTERVAL and event.done):
            return
        self._last = now
        try:
            update_progress_artifact(artifact_id=self._artifact, progress=100.0 * event.fraction,
                                     description=format_event(event))
        except Exception as exc:  # noqa: BLE001
            logger.debug("progress artifact of %s not updated: %s", self.stage, exc)


def run_stage(stage: str, rows: int, work: Callable[[], T]) -> T:
    """Run a one-task stage (fit, gates, publish) reporting ``rows`` as its size."""
    progress = StageProgress(stage, rows)
    result = work()
    progress.finish()
    return result


def wait_for_workers(cluster: ClusterSettings) -> None:
    """Connect to the running flow's Dask cluster and wait until it has a worker, each at most
    ``cluster.wait_timeout`` seconds.

    Raises
    ------
    ClusterUnavailable
        The scheduler cannot be reached, or no worker joined in time (a scheduler started
        without workers, workers that cannot reach it): one line naming the scheduler and the
        setting, instead of a silent hang or a connection traceback.
    """
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if not isinstance(runner, DaskTaskRunner):
        return
    where = cluster.address or "the local cluster's scheduler"
    try:
        client = runner.client  # connects (the runner's client is created on first use)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailable(f"cannot reach the Dask scheduler at {where} within {cluster.wait_timeout:g} s "
                                 f"(cluster.wait_timeout): {' '.join(str(exc).split())}") from exc
    try:
        client.wait_for_workers(1, timeout=cluster.wait_timeout)
    except (TimeoutError, OSError) as exc:
        raise ClusterUnavailable(
            f"no Dask worker joined the scheduler at {where} within {cluster.wait_timeout:g} s "
            f"(cluster.wait_timeout); start workers (dask worker {where}) or check cluster.address"
        ) from exc


def probe_workers(text: str, image: str, settings: Any) -> None:
    """The preflight's probe on every worker of the running flow's cluster (:func:`aniso.stages.
    preflight.probe_here`): the flow's own checks passed, but tasks read and write from the
    workers' environments, which may lack the credentials.

    Raises
    ------
    ConfigError
        One line naming the first worker that failed, what failed and the storage variables
        (``AWS_*``) its environment lacks.
    """
    from aniso.stages.preflight import probe_here, storage_variables

    client = getattr(getattr(FlowRunContext.get(), "task_runner", None), "_client", None)
    if client is None:
        return
    storage = settings.storage
    results = client.run(probe_here, text, image, storage.root, storage.dataset, storage.fs_options(),
                         storage_variables())
    failed = {worker: reason for worker, reason in sorted(results.items()) if reason}
    if failed:
        worker, reason = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more worker(s))" if len(failed) > 1 else ""
        raise ConfigError(f"preflight on Dask worker {worker}{more}: {reason}")
    logger.info("preflight passed on %d Dask worker(s)", len(results))


def announce_dashboard() -> str | None:
    """Log the Dask dashboard link of the running flow's cluster, when it serves one."""
    context = FlowRunContext.get()
    client = getattr(getattr(context, "task_runner", None), "_client", None)
    link = None
    try:
        if client is not None and "dashboard" in client.scheduler_info().get("services", {}):
            link = client.dashboard_link
    except Exception as exc:  # noqa: BLE001 - informational only
        logger.debug("no dashboard link: %s", exc)
    workers = None
    try:
        workers = len(client.scheduler_info().get("workers", {})) if client is not None else None
    except Exception:  # noqa: BLE001
        pass
    logging.getLogger("aniso.notice").info(
        "flow run started; Dask cluster ready%s, dashboard %s", "" if workers is None else f" ({workers} worker(s))",
        link or "off (cluster.dashboard=':8787' turns it on)")
    return link


#: Most shards one task runs (see :func:`shard_batches`).
MAX_SHARDS_PER_TASK = 4


def task_slots() -> int:
    """Worker threads of the running flow's Dask cluster (1 outside a flow or when unknown)."""
    client = getattr(getattr(FlowRunContext.get(), "task_runner", None), "_client", None)
    try:
        return max(1, sum(client.nthreads().values())) if client is not None else 1
    except Exception:  # noqa: BLE001 - sizing only
        return 1


def shard_batches(items: Sequence[T], slots: int) -> list[list[T]]:
    """Consecutive groups of ``items`` (shards), one task each.

    Every task costs the flow's process ~0.1-0.3 s of Python (Prefect's task-run bookkeeping,
    pickling for Dask), which holds the GIL the worker threads need between their numpy calls:
    at 1M rows, one task per 65,536-row shard made the statistics stage 4x slower than its
    compute. So a task runs several shards: about two tasks per worker thread (load balance),
    at most :data:`MAX_SHARDS_PER_TASK` shards (progress and retry granularity). Small inputs
    keep one shard per task.
    """
    per_task = max(1, min(MAX_SHARDS_PER_TASK, -(-len(items) // (2 * max(1, slots)))))
    return [list(items[i : i + per_task]) for i in range(0, len(items), per_task)]


def map_shards(task: Task, stage: str, shards: Sequence[Any], rows: Sequence[int] | None = None,
               *, batched: bool = False, **kwargs: Any) -> list[Any]:
    """Submit ``task(shard=s, **kwargs)`` for every shard (a number or a shard spec); wait in
    order, reporting progress in rows (``rows[i]`` rows for ``shards[i]``; one per shard when
    not given).

    ``batched``: the task takes ``shards=[...]`` (a group from :func:`shard_batches`) and
    returns one result per shard.

    Results come back in shard order, so every reduction over them is deterministic.
    """
    sizes = [1] * len(shards) if rows is None else [int(r) for r in rows]
    if len(sizes) != len(shards):
        raise ValueError(f"{stage}: {len(sizes)} row counts for {len(shards)} shards")
    progress = StageProgress(stage, sum(sizes))
    groups = shard_batches(list(range(len(shards))), task_slots()) if batched else [[i] for i in range(len(shards))]
    futures = [task.submit(shards=[shards[i] for i in group], **kwargs) if batched else task.submit(shard=shards[group[0]], **kwargs)
               for group in groups]
    results = []
    for future, group in zip(futures, groups):
        done = future.result()
        results.extend(done if batched else [done])
        progress.advance(sum(sizes[i] for i in group))
    progress.finish()
    logger.info("%s: %d shard(s), %d rows done", stage, len(shards), sum(sizes))
    return results
