"""Retention as a scheduled flow: ``aniso gc`` for a deployment (``infra/prefect.yaml``).

Removes old published versions and the run data no kept version needs
(:func:`aniso.published.retention.collect_garbage`): never the version ``LATEST`` names, one
younger than ``min_age_hours``, one in ``keep_versions`` (a scheduled ``--model <version>``
needs it) or one a reader holds a lease on. Every version holds its own model.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from aniso.config import Settings
from aniso.io.layout import DatasetLayout
from aniso.published.retention import collect_garbage

from .produce import resolve_settings

__all__ = ["retention"]

logger = logging.getLogger(__name__)


@flow(name="retention", validate_parameters=False)
def retention(settings: Settings | dict[str, Any], keep: int = 7, min_age_hours: float = 24.0,
              keep_versions: list[str] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Apply the retention rules to ``settings.storage``'s dataset.

    Parameters
    ----------
    settings
        The settings tree (or its JSON form): ``storage.root`` and ``storage.dataset`` say which
        dataset; ``storage.storage_options`` how to reach it.
    keep, min_age_hours, keep_versions, dry_run
        As ``aniso gc``'s ``--keep``, ``--min-age-hours``, ``--keep-version`` and ``--dry-run``.

    Returns
    -------
    dict
        ``removed`` (URLs), ``kept`` (version URLs), ``reasons`` (URL -> why) and ``bytes_freed``.
    """
    settings = resolve_settings(settings)
    layout = DatasetLayout(settings.storage.root, settings.storage.dataset)
    plan = collect_garbage(layout, keep, dry_run=dry_run, min_age_s=min_age_hours * 3600,
                           storage_options=settings.storage.fs_options(), pinned=keep_versions or ())
    for url, why in plan.reasons.items():
        logger.info("%s: %s", url, why)
    verb = "would remove" if dry_run else "removed"
    create_markdown_artifact(
        key="aniso-retention",
        markdown=f"Retention of **{layout.dataset}**: kept {len(plan.keep_versions)} version(s); {verb} "
                 f"{len(plan.remove_versions)} version(s), {len(plan.remove_runs)} run(s), "
                 f"{plan.bytes_freed / 2**20:.1f} MiB.\n\n"
                 + "\n".join(f"- `{url}`: {why}" for url, why in plan.reasons.items()))
    return {"removed": plan.removals, "kept": plan.keep_versions, "reasons": plan.reasons,
            "bytes_freed": plan.bytes_freed}
