"""``aniso gc``: remove run data and published versions that no kept version needs.

Published versions are self-contained (:mod:`aniso.published`), so nothing a reader uses lives
under ``runs/``. What is kept:

* the ``keep`` newest published versions, and always the one ``LATEST`` names;
* every version published within ``min_age_s`` (its publication time is in its name), whatever
  ``keep`` says: a job pinned to the previous version keeps its data for at least that long;
* any version named in ``pinned`` (e.g. a scheduled ``produce --model <version>`` reference);
* any version a reader holds a live lease on (:mod:`aniso.published.lease`): a training job
  iterating an older version keeps it until it stops reading;
* ``runs/<key>`` of each kept version (its quality report and a copy of its model: the version's
  lineage, and what makes republishing the same run a no-op);
* any run or half-written version folder touched within ``min_age_s`` (a run in progress).

Models: every version holds the model that made it (``published/<version>/model/``, hard links
or server-side copies of the fitting run's files), so no kept version needs anything from a
removed one, and ``produce --model latest`` always finds its model. :attr:`GcPlan.reasons` says
why each version and run is kept or removed (``aniso gc --dry-run`` prints it).

``embeddings/`` (input caches shared by runs) and ``corpus/`` are left alone.

Two ``gc`` at once are safe: whatever the other one removed first is skipped, not an error. The
bytes reported freed count a locally hard-linked file only when every one of its links goes
(publication hard-links a version's files to its run's).
"""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aniso._fs import filesystem, is_local, join_url
from aniso.errors import ConfigError
from aniso.io.layout import DatasetLayout, published_at
from aniso.published.dataset import list_versions, read_latest
from aniso.published.lease import leases_url, live_leases

__all__ = ["GcPlan", "plan_gc", "collect_garbage", "published_at"]

logger = logging.getLogger(__name__)


@dataclass
class GcPlan:
    """What ``gc`` keeps and removes (URLs), with the bytes it frees."""

    keep_versions: list[str] = field(default_factory=list)
    remove_versions: list[str] = field(default_factory=list)
    keep_runs: list[str] = field(default_factory=list)
    remove_runs: list[str] = field(default_factory=list)
    remove_partial: list[str] = field(default_factory=list)
    #: versions kept only because a reader holds a live lease: ``{url: latest expiry (epoch s)}``
    leased_versions: dict[str, float] = field(default_factory=dict)
    #: removals another gc had already made (filled in by :func:`collect_garbage`)
    already_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    #: bytes of removed hard links whose data stays referenced from kept files (not freed)
    bytes_still_linked: int = 0
    #: why each version, run and unfinished publication is kept or removed (URL -> reason)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def removals(self) -> list[str]:
        return [*self.remove_versions, *self.remove_partial, *self.remove_runs]


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else 0.0


def _files(fs: Any, path: str) -> dict[str, dict[str, Any]]:
    """Every file under ``path`` with its details; nothing when another gc removed it meanwhile."""
    try:
        return fs.find(path, detail=True)
    except FileNotFoundError:
        return {}


def _usage(fs: Any, path: str) -> tuple[int, float]:
    """(bytes, newest modification time) of everything under ``path``."""
    found = _files(fs, path)
    if not found:
        return 0, 0.0
    return sum(int(i.get("size") or 0) for i in found.values()), max(_mtime(i) for i in found.values())


def _freed(fs: Any, paths: list[str]) -> tuple[int, int]:
    """``(bytes freed, bytes still linked)`` by removing ``paths``.

    On local disks a file's data is freed only when its last hard link goes: a file counts when
    every one of its links (``nlink``) lies under ``paths``; the rest stays referenced (a kept
    run's store, another version). Object storage has no links: every byte counts.
    """
    inodes: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [size, nlink, links removed]
    freed = 0
    for path in paths:
        for name, info in _files(fs, path).items():
            size = int(info.get("size") or 0)
            if not is_local(fs) or info.get("ino") is None:
                freed += size
                continue
            entry = inodes.setdefault((info.get("dev", 0), info["ino"]), [size, int(info.get("nlink") or 1), 0])
            entry[2] += 1
    shared = 0
    for size, nlink, removed in inodes.values():
        if removed >= nlink:
            freed += size
        else:
            shared += size
    return freed, shared


def _children(fs: Any, path: str) -> list[str]:
    try:
        return sorted(p.rstrip("/") for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _version_reason(name: str, *, latest: str | None, newest: set[str], keep: int, pinned: set[str],
                    age: float, min_age_s: float) -> str | None:
    """Why version ``name`` is kept (None: nothing keeps it, leases aside)."""
    if name == latest:
        return "LATEST names it"
    if name in pinned:
        return "pinned (--keep-version)"
    if age < min_age_s:
        return f"published {_age(age)} ago, younger than --min-age-hours {min_age_s / 3600:g}"
    if name in newest:
        return f"one of the {keep} newest"
    return None


def plan_gc(layout: DatasetLayout, keep: int, *, min_age_s: float = 86400.0,
            storage_options: dict[str, Any] | None = None, pinned: list[str] | tuple[str, ...] = (),
            now: float | None = None) -> GcPlan:
    """Decide what :func:`collect_garbage` removes, and why (:attr:`GcPlan.reasons`); removes nothing.

    Parameters
    ----------
    pinned
        Versions to keep whatever their age (a scheduled ``--model <version>`` needs its version).
    now
        The time ages are measured at (epoch s; default: the clock).
    """
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral):
        raise ConfigError(f"--keep must be a whole number of versions (got {keep!r})")
    if min_age_s != min_age_s or min_age_s < 0:  # NaN or negative: "young" would mean nothing
        raise ConfigError(f"--min-age-hours must be a non-negative number (got {min_age_s / 3600!r})")
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1 (got {keep}): gc never removes every version")
    options = storage_options or {}
    fs, base = filesystem(layout.base, options)
    now = time.time() if now is None else now
    versions = list_versions(layout, options)
    latest = read_latest(layout, options)
    latest_name = latest["version"] if latest else None
    unknown = sorted(set(pinned) - set(versions))
    if unknown:
        raise ConfigError(f"--keep-version {unknown[0]}: no such published version of {layout.dataset}")
    plan = GcPlan()
    run_keys: set[str] = set()
    for name in versions:
        url = layout.published(name)
        when = published_at(name)
        if when is None:  # not a name publish() gives: its manifest's modification time
            when = _usage(fs, join_url(base, "published", name, "manifest.json"))[1]
        reason = _version_reason(name, latest=latest_name, newest=set(versions[-keep:]), keep=keep,
                                 pinned=set(pinned), age=now - when, min_age_s=min_age_s)
        leases = [] if reason else live_leases(layout, name, options, now)
        if reason or leases:
            plan.keep_versions.append(url)
            run_keys.add(name.rsplit("-", 1)[-1])
            if leases:
                plan.leased_versions[url] = max(float(lease.get("expires", now)) for lease in leases)
                reason = "a reader holds a lease on it"
            plan.reasons[url] = f"kept: {reason}"
        else:
            plan.remove_versions.append(url)
            plan.reasons[url] = (f"older than the {keep} newest, not LATEST, published {_age(now - when)} ago, "
                                 "no reader's lease")
    published_path = join_url(base, "published")
    for path in _children(fs, published_path):
        name = path.rsplit("/", 1)[-1]
        if name == "LATEST" or name in versions or not fs.isdir(path):
            continue
        size, newest = _usage(fs, path)
        url = join_url(layout.base, "published", name)
        if now - newest >= min_age_s:  # a publication that died before its manifest
            plan.remove_partial.append(url)
            plan.reasons[url] = f"a publication without a manifest, untouched for {_age(now - newest)}"
    for path in _children(fs, join_url(base, "runs")):
        key = path.rsplit("/", 1)[-1]
        url = join_url(layout.base, "runs", key)
        size, newest = _usage(fs, path)
        if key[:12] in run_keys:
            plan.keep_runs.append(url)
            plan.reasons[url] = "kept: the run of a kept version"
        elif now - newest < min_age_s:
            plan.keep_runs.append(url)
            plan.reasons[url] = f"kept: touched {_age(max(0.0, now - newest))} ago (a run in progress?)"
        else:
            plan.remove_runs.append(url)
            plan.reasons[url] = f"no kept version was published from it, untouched for {_age(now - newest)}"
    plan.bytes_freed, plan.bytes_still_linked = _freed(fs, [filesystem(u, options)[1] for u in plan.removals])
    return plan


def collect_garbage(layout: DatasetLayout, keep: int, *, dry_run: bool = False, min_age_s: float = 86400.0,
                    storage_options: dict[str, Any] | None = None, pinned: list[str] | tuple[str, ...] = (),
                    now: float | None = None) -> GcPlan:
    """Remove what :func:`plan_gc` selects (nothing with ``dry_run``); returns the plan.

    Versions go first, then runs: an interrupted gc never leaves a kept version without data
    (kept versions need nothing outside their own folder anyway). Each version's leases are
    checked again just before it goes (a reader may have opened it since the plan); what another
    gc removed first is listed in ``already_removed``.
    """
    options = storage_options or {}
    plan = plan_gc(layout, keep, min_age_s=min_age_s, storage_options=options, pinned=pinned, now=now)
    if dry_run:
        return plan
    fs = filesystem(layout.base, options)[0]
    opened = [url for url in plan.remove_versions if live_leases(layout, url.rstrip("/").rsplit("/", 1)[-1], options)]
    for url in opened:  # a reader opened it since the plan: keep it, and count only what still goes
        plan.remove_versions.remove(url)
        plan.keep_versions.append(url)
        plan.leased_versions[url] = time.time()
        plan.reasons[url] = "kept: a reader holds a lease on it"
        logger.info("gc kept %s: a reader opened it meanwhile", url)
    if opened:
        plan.bytes_freed, plan.bytes_still_linked = _freed(fs, [filesystem(u, options)[1] for u in plan.removals])
    for url in plan.removals:
        if _remove(url, options):
            logger.info("gc removed %s", url)
        else:
            plan.already_removed.append(url)
        if url in plan.remove_versions:
            _remove(leases_url(layout, url.rstrip("/").rsplit("/", 1)[-1]), options)
    return plan


def _remove(url: str, options: dict[str, Any]) -> bool:
    """Remove ``url`` recursively; False when another gc removed it first (races are not errors)."""
    fs, path = filesystem(url, options)
    for _ in range(5):  # the other gc may delete files under us mid-walk: retry what is left
        try:
            if not fs.exists(path):
                return False
            fs.rm(path, recursive=True)
            return True
        except FileNotFoundError:
            fs.invalidate_cache()
    return not fs.exists(path)
