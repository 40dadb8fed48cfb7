"""aniso's own log lines reach the Prefect server: an API log handler on the ``aniso`` logger.

Prefect sends only its own loggers' records to the API. :func:`send_aniso_logs_to_prefect` adds
Prefect's handler to the ``aniso`` logger, once per process (the flow's process and every Dask
worker process import this package), and only records made inside a flow or task run are sent.
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

__all__ = ["send_aniso_logs_to_prefect"]


class RunLogHandler(APILogHandler):
    """Prefect's API handler, silent outside a run (library use, the CLI before the flow)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) or FlowRunContext.get() or TaskRunContext.get():
            super().emit(record)


def send_aniso_logs_to_prefect() -> None:
    """Attach :class:`RunLogHandler` to the ``aniso`` logger (idempotent).

    An ``aniso`` logger whose level nobody set logs INFO, so a served or deployed run shows the
    run key, stage progress and gate results in the Prefect UI.
    """
    logger = logging.getLogger("aniso")
    if not any(isinstance(h, RunLogHandler) for h in logger.handlers):
        logger.addHandler(RunLogHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
