"""``aniso gc``: remove run data and published versions that no kept version needs.

Published versions are self-contained (:mod:`aniso.published`), so nothing a reader uses lives
under ``runs/``. What is kept:

* the ``keep`` newest published versions, and always the one ``LATEST`` names;
* ``runs/<key>`` of each kept version (its model and quality report: the version's lineage, and
  what makes republishing the same run a no-op);
* any run or half-written version folder touched within ``min_age_s`` (a run in progress).

``embeddings/`` (input caches shared by runs) and ``corpus/`` are left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aniso._fs import filesystem, join_url
from aniso.errors import ConfigError
from aniso.io.layout import DatasetLayout
from aniso.published.dataset import list_versions, read_latest

__all__ = ["GcPlan", "plan_gc", "collect_garbage"]

logger = logging.getLogger(__name__)


@dataclass
class GcPlan:
    """What ``gc`` keeps and removes (URLs), with the bytes it frees."""

    keep_versions: list[str] = field(default_factory=list)
    remove_versions: list[str] = field(default_factory=list)
    keep_runs: list[str] = field(default_factory=list)
    remove_runs: list[str] = field(default_factory=list)
    remove_partial: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    @property
    def removals(self) -> list[str]:
        return [*self.remove_versions, *self.remove_partial, *self.remove_runs]


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else 0.0


def _usage(fs: Any, path: str) -> tuple[int, float]:
    """(bytes, newest modification time) of everything under ``path``."""
    found = fs.find(path, detail=True)
    if not found:
        return 0, 0.0
    return sum(int(i.get("size") or 0) for i in found.values()), max(_mtime(i) for i in found.values())


def _children(fs: Any, path: str) -> list[str]:
    try:
        return sorted(p.rstrip("/") for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def plan_gc(layout: DatasetLayout, keep: int, *, min_age_s: float = 86400.0,
            storage_options: dict[str, Any] | None = None) -> GcPlan:
    """Decide what :func:`collect_garbage` removes; removes nothing."""
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1 (got {keep}): gc never removes every version")
    options = storage_options or {}
    fs, base = filesystem(layout.base, options)
    now = time.time()
    versions = list_versions(layout, options)
    latest = read_latest(layout, options)
    kept = set(versions[-keep:]) | ({latest["version"]} if latest else set())
    plan = GcPlan()
    run_keys: set[str] = set()
    for name in versions:
        url = layout.published(name)
        if name in kept:
            plan.keep_versions.append(url)
            run_keys.add(name.rsplit("-", 1)[-1])
        else:
            plan.remove_versions.append(url)
            plan.bytes_freed += _usage(fs, filesystem(url, options)[1])[0]
    published_path = join_url(base, "published")
    for path in _children(fs, published_path):
        name = path.rsplit("/", 1)[-1]
        if name == "LATEST" or name in versions or not fs.isdir(path):
            continue
        size, newest = _usage(fs, path)
        if now - newest >= min_age_s:  # a publication that died before its manifest
            plan.remove_partial.append(join_url(layout.base, "published", name))
            plan.bytes_freed += size
    for path in _children(fs, join_url(base, "runs")):
        key = path.rsplit("/", 1)[-1]
        url = join_url(layout.base, "runs", key)
        size, newest = _usage(fs, path)
        if key[:12] in run_keys or now - newest < min_age_s:
            plan.keep_runs.append(url)
        else:
            plan.remove_runs.append(url)
            plan.bytes_freed += size
    return plan


def collect_garbage(layout: DatasetLayout, keep: int, *, dry_run: bool = False, min_age_s: float = 86400.0,
                    storage_options: dict[str, Any] | None = None) -> GcPlan:
    """Remove what :func:`plan_gc` selects (nothing with ``dry_run``); returns the plan.

    Versions go first, then runs: an interrupted gc never leaves a kept version without data
    (kept versions need nothing outside their own folder anyway).
    """
    options = storage_options or {}
    plan = plan_gc(layout, keep, min_age_s=min_age_s, storage_options=options)
    if dry_run:
        return plan
    for url in plan.removals:
        fs, path = filesystem(url, options)
        fs.rm(path, recursive=True)
        logger.info("gc removed %s", url)
    return plan
