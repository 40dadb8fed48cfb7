"""Reader leases: a version a reader has open is never removed by ``aniso gc`` under it.

A reader that opens a version writes a small lease object, ``<dataset>/leases/<version>/<id>.json``
(``{"version", "host", "pid", "taken", "expires"}``), and rewrites it with a later ``expires``
while it keeps reading (at most every quarter of the lease). ``aniso gc`` keeps every version
with a lease not yet expired (:func:`live_leases`) and says so. Taking a lease is best effort: a
reader with read-only credentials logs a warning and reads on, unprotected.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from aniso._fs import filesystem, join_url, write_atomic
from aniso.io.layout import DatasetLayout, check_name

__all__ = ["LEASE_S", "Lease", "leases_url", "live_leases"]

logger = logging.getLogger(__name__)

#: Default lease length (seconds): a reader idle for longer than this no longer protects its version.
LEASE_S = 6 * 3600.0


def leases_url(layout: DatasetLayout, version: str | None = None) -> str:
    """The folder of every lease (``version=None``) or of one version's leases."""
    base = join_url(layout.base, "leases")
    return base if version is None else join_url(base, check_name(version, "version"))


class Lease:
    """One reader's lease on one version; :meth:`renew` is cheap to call on every batch."""

    def __init__(self, layout: DatasetLayout, version: str, storage_options: dict[str, Any], seconds: float) -> None:
        self.seconds, self.options, self.version = seconds, storage_options, version
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.url = join_url(leases_url(layout, version), name)
        self.written = float("-inf")
        self.held = True
        self.renew(force=True)

    def renew(self, *, force: bool = False) -> None:
        """Push ``expires`` forward when a quarter of the lease has passed (or ``force``)."""
        now = time.time()
        if not self.held or (not force and now - self.written < self.seconds / 4):
            return
        body = {"version": self.version, "host": socket.gethostname(), "pid": os.getpid(),
                "taken": now, "expires": now + self.seconds}
        try:
            write_atomic(self.url, json.dumps(body, sort_keys=True), self.options)
        except (OSError, ValueError) as exc:  # read-only credentials or storage: read on, unprotected
            logger.warning("could not record a reader lease on version %s at %s (%s): aniso gc may remove "
                           "it while it is read", self.version, self.url, exc)
            self.held = False
            return
        self.written = now

    def release(self) -> None:
        """Remove the lease (the reader is done); never raises."""
        if not self.held:
            return
        self.held = False
        fs, path = filesystem(self.url, self.options)
        try:
            fs.rm(path)
        except (OSError, ValueError) as exc:
            logger.debug("lease %s not removed (%s); it expires by itself", self.url, exc)


def live_leases(layout: DatasetLayout, version: str, storage_options: dict[str, Any] | None = None,
                now: float | None = None) -> list[dict[str, Any]]:
    """The unexpired leases on ``version`` (an unreadable lease counts as live: it may be mid-write)."""
    options = storage_options or {}
    now = time.time() if now is None else now
    fs, path = filesystem(leases_url(layout, version), options)
    fs.invalidate_cache(path)  # a cached listing would miss a lease another process just wrote
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    live = []
    for name in names:
        try:
            lease = json.loads(fs.cat_file(name))
            expires = float(lease["expires"])
        except FileNotFoundError:  # released meanwhile
            continue
        except (ValueError, KeyError, TypeError):
            lease, expires = {"url": name, "unreadable": True}, float("inf")
        if expires > now:
            live.append({**lease, "url": name})
    return live
