"""Reading a published version: the ``LATEST`` pointer, the manifest, and the reader helper.

A published version (``docs/format.md``, written by :mod:`aniso.published.writer`)::

    published/<version>/data.zarr/      the Zarr v3 group (embedding, id, valid), crc32c per chunk
    published/<version>/manifest.json   shapes, ids, per-shard sha256, gates, lineage
    published/LATEST                    {"version", "manifest", "run_key"}

Every read checks what it reads: a malformed pointer or manifest, or a manifest path that would
leave the version folder, is :class:`~aniso.errors.StoreCorrupt` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aniso._fs import filesystem, join_url, open_url
from aniso.errors import ConfigError, StoreCorrupt, StoreNotFound
from aniso.io.layout import DatasetLayout, check_name
from aniso.io.store import EmbeddingStore, shard_checksum

__all__ = [
    "open_published", "PublishedDataset", "read_latest", "find_published", "list_versions",
    "MANIFEST_FORMAT", "DATA_PATH", "REPORT_PATH", "schema",
]

MANIFEST_FORMAT = "aniso-substitutes/2"
#: Where a version's Zarr group lives, relative to ``published/<version>/``.
DATA_PATH = "data.zarr"
#: The version's quality report, relative to ``published/<version>/`` (when the run wrote one).
REPORT_PATH = "report.html"
_REQUIRED = ("format", "version", "path", "n_rows", "dim", "shards", "arrays")


def schema(name: str = "manifest") -> dict[str, Any]:
    """The JSON Schema shipped with the package: ``"manifest"`` or ``"latest"`` (docs/format.md)."""
    from importlib.resources import files

    return json.loads((files("aniso") / "schema" / f"{name}.schema.json").read_text())


def read_json(url: str, storage_options: dict[str, Any], what: str) -> Any:
    """JSON at ``url``; a truncated or malformed file is StoreCorrupt naming it."""
    with open_url(url, "r", storage_options) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreCorrupt(f"{what} {url} is not valid JSON (truncated or corrupted?): {exc}") from exc


def read_latest(layout: DatasetLayout, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``LATEST`` pointer, or None when nothing was published yet.

    Raises
    ------
    StoreCorrupt
        When ``LATEST`` is not valid JSON, lacks ``version``, or names an unsafe version.
    """
    try:
        pointer = read_json(layout.latest, storage_options or {}, "the LATEST pointer")
    except FileNotFoundError:
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
        fields = sorted(pointer) if isinstance(pointer, dict) else type(pointer).__name__
        raise StoreCorrupt(f"the LATEST pointer {layout.latest} lacks its 'version' field (found {fields})")
    try:
        check_name(pointer["version"], "version")
    except ConfigError as exc:
        raise StoreCorrupt(f"the LATEST pointer {layout.latest} names an invalid version: {exc}") from None
    return pointer


def list_versions(layout: DatasetLayout, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Published versions (those with a manifest), oldest first (names sort by creation time)."""
    fs, path = filesystem(join_url(layout.base, "published"), storage_options or {})
    try:
        entries = sorted(fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return [n for n, e in zip(names, entries) if n != "LATEST" and fs.exists(join_url(e, "manifest.json"))]


def find_published(layout: DatasetLayout, run_key: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The version already published for ``run_key`` (publication is idempotent), if any."""
    matches = [v for v in list_versions(layout, storage_options) if v.endswith(run_key[:12])]
    return matches[-1] if matches else None


def _confined(version_url: str, rel: Any, manifest_url: str) -> str:
    """``rel`` joined onto the version folder; anything that could leave it is StoreCorrupt."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if (not parts or rel.startswith("/") or "://" in rel or "\\" in rel or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise StoreCorrupt(
            f"{manifest_url}: 'path' {rel!r} is not a relative path inside the version folder"
        )
    return join_url(version_url, *parts)


@dataclass
class PublishedDataset:
    """A published version: its manifest and lazily-read zarr arrays."""

    manifest: dict[str, Any]
    store: EmbeddingStore
    url: str = ""

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def embedding(self):
        """The ``(N, d)`` zarr array (slice it to read)."""
        return self.store.embedding

    @property
    def valid(self) -> np.ndarray:
        """``(N,)`` bool: False where the item failed upstream (its row is all zeros)."""
        return self.store.group["valid"][:]

    @property
    def ids(self) -> np.ndarray:
        return np.array([str(v) for v in self.store.ids[:].tolist()], dtype=object)

    def problems(self) -> list[str]:
        """Every damaged shard, named with its rows and what is wrong (empty when intact)."""
        found = []
        if list(self.store.shape) != [self.manifest["n_rows"], self.manifest["dim"]]:
            found.append(f"{self.store.url}: shape {self.store.shape} differs from the manifest's "
                         f"({self.manifest['n_rows']}, {self.manifest['dim']})")
            return found
        fs, root = filesystem(self.store.url, self.store.storage_options)
        for entry in self.manifest["shards"]:
            shard, start, stop = entry["shard"], entry["start"], entry["stop"]
            where = f"shard {shard} (rows [{start}, {stop})) of {self.store.url}"
            try:
                emb, ids, valid = self.store.read_rows(start, stop)
            except StoreCorrupt as exc:
                found.append(f"{where}: unreadable ({exc.__cause__ or exc})")
                continue
            if shard_checksum(emb, list(ids)) != entry["sha256"]:
                # zarr reads a missing shard file as fill values: say so when that is the cause
                missing = [name for name in ("embedding", "id") if not fs.exists(
                    join_url(root, name, "c", str(shard), *(["0"] if name == "embedding" else [])))]
                why = f"shard file(s) of {', '.join(missing)} missing" if missing else "does not match its published checksum"
                found.append(f"{where}: {why}")
            elif "valid_rows" in entry and int(np.count_nonzero(valid)) != entry["valid_rows"]:
                found.append(f"{where}: {int(np.count_nonzero(valid))} valid rows, the manifest says {entry['valid_rows']}")
        return found

    def verify(self) -> None:
        """Recompute every shard checksum against the manifest; raise StoreCorrupt naming every
        damaged shard and its rows."""
        found = self.problems()
        if found:
            raise StoreCorrupt(f"{len(found)} damaged shard(s): " + "; ".join(found))

    def iter_batches(self, batch_size: int, **kwargs: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunk-aware ``(ids, embeddings)`` batches (each row once per epoch across ranks).

        Keyword arguments (``shuffle``, ``seed``, ``epoch``, ``rank``, ``world_size``,
        ``buffer_chunks``, ``only_valid``, ``drop_last``) are those of
        :func:`aniso.published.loader.iter_batches`.
        """
        from aniso.published.loader import iter_batches

        kwargs.setdefault("all_valid", self.all_valid)
        return iter_batches(self.store.group, batch_size, **kwargs)

    @property
    def all_valid(self) -> bool:
        """Whether the manifest records every row as valid (readers may skip ``valid``)."""
        return self.manifest.get("valid_rows") == self.manifest.get("n_rows")


def open_published(
    root_url: str,
    dataset: str,
    *,
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> PublishedDataset:
    """Open the published dataset (``LATEST`` unless ``version`` is given).

    Raises
    ------
    StoreNotFound
        Nothing published, or no such version.
    StoreCorrupt
        A truncated or malformed ``LATEST`` or manifest (the message names the file), or a
        manifest ``path`` that would leave the version folder.

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
    version_url = layout.published(version)
    manifest_url = join_url(version_url, "manifest.json")
    try:
        manifest = read_json(manifest_url, options, "manifest")
    except FileNotFoundError:
        raise StoreNotFound(f"published version {version!r} of {dataset!r} has no manifest ({manifest_url})") from None
    if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED):
        have = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreCorrupt(f"manifest {manifest_url} lacks required field(s) "
                           f"{[k for k in _REQUIRED if not isinstance(manifest, dict) or k not in manifest]} (found {have})")
    if manifest["format"] != MANIFEST_FORMAT:
        raise StoreCorrupt(f"manifest {manifest_url} has format {manifest['format']!r}; this reader knows {MANIFEST_FORMAT!r}")
    store = EmbeddingStore.open(_confined(version_url, manifest["path"], manifest_url), storage_options=options)
    return PublishedDataset(manifest, store, version_url)
