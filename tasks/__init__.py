"""Thin Prefect tasks, one module per stage; each calls into :mod:`aniso`.

Importing the package sends aniso's log lines to the Prefect server (see ``_logging``), in the
flow's process and in every Dask worker process that runs a task.
"""

from ._logging import send_aniso_logs_to_prefect

send_aniso_logs_to_prefect()
