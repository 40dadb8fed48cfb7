"""Publish task: manifest, then the LATEST pointer (only called once every gate passed)."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso.io.layout import DatasetLayout
from aniso.published.writer import publish as publish_version

from ._retry import TASK_OPTIONS


@task(name="publish", **TASK_OPTIONS)
def publish(root: str, dataset: str, run_key: str, gate_results: dict[str, Any], lineage: dict[str, Any],
            storage_options: dict[str, Any], report_from: str | None = None, **model: Any) -> dict[str, Any]:
    """Publish the run (``model``: :func:`aniso.published.writer.publish`'s model and id keywords)."""
    return publish_version(DatasetLayout(root, dataset), run_key, gate_results=gate_results, lineage=lineage,
                           storage_options=storage_options, report_from=report_from, **model)
