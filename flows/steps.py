"""Deployment steps of aniso's own, for ``pull:`` sections of ``infra/prefect.yaml``.

Prefect resolves ``{{ $VAR }}`` templates when ``prefect deploy`` runs, on the deployer's machine,
so a step that must see the worker's environment reads it itself, here, when the flow run starts.
"""

from __future__ import annotations

import logging
import os

from aniso.errors import ConfigError

__all__ = ["worker_directory"]

logger = logging.getLogger(__name__)


def worker_directory() -> dict[str, str]:
    """Run the flow in the directory its process worker was started from.

    A Prefect process worker starts each flow run in a new temporary directory; with this step,
    relative paths in the deployment's parameters (``./inputs/text.npy``, ``./aniso-data``) mean
    the worker's directory, which the flow run inherits as ``PWD`` in the worker's environment.

    Returns
    -------
    dict
        ``directory``: where the flow run now works (a step output for later steps).

    Raises
    ------
    ConfigError
        When the environment has no ``PWD`` (a worker not started from a shell) or it names no
        directory.
    """
    directory = os.environ.get("PWD", "")
    if not directory:
        raise ConfigError("deployment step worker_directory: the process worker's environment has no PWD "
                          "(start it from a shell, or give the deployment absolute paths)")
    if not os.path.isdir(directory):
        raise ConfigError(f"deployment step worker_directory: PWD={directory} is not a directory")
    os.chdir(directory)
    logger.info("working directory: %s (the process worker's)", directory)
    return {"directory": directory}
