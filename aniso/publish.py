"""Atomic publication and the reader helper for training teams.

Write order (DESIGN.md §5): shard data → shard markers (by :mod:`aniso.store`) → the version's
``manifest.json`` → ``published/LATEST``. Each of the last two is a single object written in one
put (or, locally, a temp file renamed into place), so a reader that follows ``LATEST`` never sees
a partial dataset, and a failed or concurrent run never leaves ``LATEST`` pointing at one.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ._fs import filesystem, is_local, join_url, open_url
from .errors import StoreCorrupt, StoreNotFound
from .layout import DatasetLayout
from .store import EmbeddingStore

__all__ = ["publish", "open_published", "PublishedDataset", "read_latest", "find_published"]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "aniso-substitutes/1"


def _write_atomic(url: str, text: str, storage_options: dict[str, Any]) -> None:
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:  # one PUT: object stores make it visible whole or not at all
        with fs.open(path, "w") as f:
            f.write(text)


def read_latest(layout: DatasetLayout, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``LATEST`` pointer, or None when nothing was published yet."""
    try:
        with open_url(layout.latest, "r", storage_options) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise StoreCorrupt(f"{layout.latest} is not valid JSON: {exc}") from exc


def find_published(layout: DatasetLayout, run_key: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The version already published for ``run_key`` (publication is idempotent), if any."""
    fs, path = filesystem(join_url(layout.base, "published"), storage_options)
    try:
        entries = sorted(fs.ls(path, detail=False))
    except FileNotFoundError:
        return None
    for entry in reversed(entries):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(run_key[:12]) and fs.exists(join_url(entry, "manifest.json")):
            return name
    return None


def publish(
    layout: DatasetLayout,
    run_key: str,
    *,
    gate_results: dict[str, Any],
    lineage: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the run's substitutes as a new immutable version and move ``LATEST`` to it.

    Returns the ``LATEST`` pointer. Rerunning for an already-published run key re-points
    ``LATEST`` at the existing version instead of writing a second copy.
    """
    options = storage_options or {}
    version = find_published(layout, run_key, options)
    if version is None:
        version = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}-{run_key[:12]}"
        store = EmbeddingStore.open(layout.substitutes(run_key), storage_options=options)
        if not store.is_complete():
            raise StoreCorrupt(f"refusing to publish {store.url}: not every shard is complete")
        markers = store.markers()
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "dataset": layout.dataset,
            "run_key": run_key,
            "created": datetime.now(timezone.utc).isoformat(),
            "path": f"runs/{run_key}/substitutes.zarr",
            "arrays": {
                "embedding": {"shape": list(store.shape), "dtype": str(store.embedding.dtype),
                              "chunks": list(store.embedding.chunks), "shards": [store.shard_rows, store.dim]},
                "id": {"shape": [store.n_rows], "dtype": "string"},
                "valid": {"shape": [store.n_rows], "dtype": "bool"},
            },
            "n_rows": store.n_rows,
            "valid_rows": sum(m["valid_rows"] for m in markers),
            "dim": store.dim,
            "shards": [{k: m[k] for k in ("shard", "start", "stop", "rows", "sha256")} for m in markers],
            "gates": gate_results,
            "lineage": lineage,
        }
        _write_atomic(join_url(layout.published(version), "manifest.json"),
                      json.dumps(manifest, indent=2, sort_keys=True, default=str), options)
    pointer = {"version": version, "manifest": f"published/{version}/manifest.json", "run_key": run_key}
    _write_atomic(layout.latest, json.dumps(pointer, sort_keys=True), options)
    logger.info("published %s as version %s", layout.base, version)
    return pointer


@dataclass
class PublishedDataset:
    """A published version: its manifest and lazily-read zarr arrays."""

    manifest: dict[str, Any]
    store: EmbeddingStore

    @property
    def embedding(self):
        """The ``(N, d)`` zarr array (slice it to read)."""
        return self.store.embedding

    @property
    def ids(self) -> np.ndarray:
        return np.array([str(v) for v in self.store.ids[:].tolist()], dtype=object)

    def verify(self) -> None:
        """Recompute every shard checksum against the manifest; raise StoreCorrupt on mismatch."""
        from .store import shard_checksum

        for entry in self.manifest["shards"]:
            emb, ids, _ = self.store.read_rows(entry["start"], entry["stop"])
            if shard_checksum(emb, list(ids)) != entry["sha256"]:
                raise StoreCorrupt(f"shard {entry['shard']} of {self.store.url} does not match its published checksum")


def open_published(
    root_url: str,
    dataset: str,
    *,
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> PublishedDataset:
    """Open the published dataset (``LATEST`` unless ``version`` is given).

    Examples
    --------
    >>> ds = open_published("s3://bucket/aniso", dataset="coco")   # doctest: +SKIP
    >>> block = ds.embedding[:4096]                                 # doctest: +SKIP
    """
    layout = DatasetLayout(root_url, dataset)
    options = storage_options or {}
    if version is None:
        pointer = read_latest(layout, options)
        if pointer is None:
            raise StoreNotFound(f"nothing published for dataset {dataset!r} under {root_url}")
        version = pointer["version"]
    try:
        with open_url(join_url(layout.published(version), "manifest.json"), "r", options) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise StoreNotFound(f"published version {version!r} of {dataset!r} has no manifest") from None
    store = EmbeddingStore.open(join_url(layout.base, manifest["path"]), storage_options=options)
    return PublishedDataset(manifest, store)
