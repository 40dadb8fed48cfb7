"""Running a flow from the CLI: the announcement lines, the early server, the progress display."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._console import configure_logging, notice, progress_display

if TYPE_CHECKING:
    from aniso.config import Settings

__all__ = ["announce_settings", "announce_start", "flow_with_runner", "run_produce"]


def announce_settings(settings: Settings) -> None:
    """The second line: where the run writes, with which method and cluster (settings resolved)."""
    method = f"the frozen model {settings.method.model} (its own method)" if settings.method.model else \
        f"method {settings.method.name}"
    notice("writing to %s/%s with %s on %d Dask worker(s)", settings.storage.root, settings.storage.dataset,
           method, settings.cluster.n_workers)


def flow_with_runner(flow: Any, settings: Settings, *, verbose: bool = False) -> Any:
    """``flow`` on the settings' Dask cluster (Prefect imported here: its import resets logging)."""
    from aniso.flows._common import make_task_runner

    configure_logging(verbose)
    return flow.with_options(task_runner=make_task_runner(settings.cluster))


def announce_start(settings: Settings) -> None:
    """The line before the flow run starts: where it runs."""
    cluster = settings.cluster
    where = f"the Dask scheduler at {cluster.address}" if cluster.address else \
        f"a {(cluster.cluster_class or 'distributed.LocalCluster').rsplit('.', 1)[-1]} of {cluster.n_workers} worker(s)"
    notice("starting the Prefect flow run (local server unless PREFECT_API_URL is set) on %s", where)


def run_produce(text: str, image: str, settings: Settings, *, verbose: bool = False) -> dict:
    """Check inputs and storage (fast, no Prefect server yet), then run the ``produce`` flow, which
    builds its Dask task runner from ``settings.cluster``, with the progress display."""
    from aniso.flows._server import start_local_server
    from aniso.quality.gates import preload_in_background
    from aniso.stages.preflight import preflight

    server = start_local_server()  # boots while the inputs are checked and the flows imported
    # the gate libraries import while this process would otherwise wait for the server's boot
    preload_in_background()
    try:
        preflight(text, image, settings)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    from aniso.flows.produce import produce

    configure_logging(verbose)  # Prefect's import resets logging
    announce_start(settings)
    if server is not None:
        server.wait()
    with progress_display():
        return produce(text=text, image=image, settings=settings)
