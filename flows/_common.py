"""Helpers shared by the flows: the Dask task runner from settings, and shard fan-out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect import Task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from aniso.config import ClusterSettings
from aniso.progress import report

logger = logging.getLogger(__name__)


def make_task_runner(cluster: ClusterSettings) -> DaskTaskRunner:
    """A DaskTaskRunner: an existing scheduler when ``address`` is set, else a temporary cluster."""
    if cluster.address:
        return DaskTaskRunner(address=cluster.address)
    cluster_class = cluster.cluster_class or "distributed.LocalCluster"
    kwargs: dict[str, Any] = {}
    if cluster_class.rsplit(".", 1)[-1] in ("LocalCluster", "LocalCUDACluster"):
        # Only the local clusters take these; KubeCluster/SLURMCluster size themselves from
        # their own specs in cluster_kwargs.
        kwargs = {"n_workers": cluster.n_workers, "threads_per_worker": cluster.threads_per_worker,
                  "dashboard_address": None}
        if cluster_class.endswith(".LocalCluster"):
            kwargs["processes"] = cluster.processes
    kwargs.update(cluster.cluster_kwargs)
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)


def map_shards(task: Task, stage: str, shards: Sequence[Any], **kwargs: Any) -> list[Any]:
    """Submit ``task(shard=s, **kwargs)`` for every shard (a number or a shard spec); wait in
    order, reporting progress.

    Results come back in shard order, so every reduction over them is deterministic.
    """
    total = len(shards)
    artifact_id = None
    if total and FlowRunContext.get() is not None:
        artifact_id = create_progress_artifact(progress=0.0, description=f"{stage}: shards done")
    futures = [task.submit(shard=s, **kwargs) for s in shards]
    results = []
    report(stage, 0, total)
    for done, future in enumerate(futures, start=1):
        results.append(future.result())
        report(stage, done, total)
        if artifact_id is not None:
            update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / total)
    logger.info("%s: %d shard(s) done", stage, total)
    return results
