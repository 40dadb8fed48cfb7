"""Reading a published version: the ``LATEST`` pointer, the manifest, and the reader helper.

A published version (``docs/format.md``, written by :mod:`aniso.published.writer`)::

    published/<version>/data.zarr/      the Zarr v3 group (embedding, id, valid), crc32c per chunk
    published/<version>/manifest.json   shapes, ids, per-shard sha256 and per-chunk crc32c, gates, lineage
    published/LATEST                    {"version", "manifest", "run_key"}

Every read checks what it reads: a malformed pointer or manifest, a manifest path that would
leave the version folder, or a manifest that does not describe its arrays is
:class:`~aniso.errors.StoreCorrupt` naming the file; every chunk read is checked against the
manifest's digest (:mod:`aniso.published.checked`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aniso._fs import filesystem, join_url, open_url
from aniso.errors import ConfigError, StoreCorrupt, StoreNotFound
from aniso.io.chunk_digest import chunk_digests
from aniso.io.layout import DatasetLayout, check_name
from aniso.io.store import EmbeddingStore, shard_checksum
from aniso.published.checked import CheckedArray, ChunkDigests
from aniso.published.lease import LEASE_S, Lease
from aniso.published.manifest_check import manifest_problems
from aniso.published.model_check import model_problems

__all__ = [
    "open_published", "PublishedDataset", "read_latest", "find_published", "list_versions",
    "MANIFEST_FORMAT", "READABLE_FORMATS", "DATA_PATH", "REPORT_PATH", "schema",
]

logger = logging.getLogger(__name__)

#: The format this package writes (3 added per-chunk digests); 2 is still read, unchecked.
MANIFEST_FORMAT = "aniso-substitutes/3"
READABLE_FORMATS = ("aniso-substitutes/2", MANIFEST_FORMAT)
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
    """A published version: its manifest and checked, lazily-read arrays.

    Every read through :attr:`embedding`, :attr:`ids`, :attr:`valid` and :meth:`iter_batches`
    checks each chunk against the manifest's digest (:mod:`aniso.published.checked`). While open
    it holds a reader lease (:mod:`aniso.published.lease`) so ``aniso gc`` keeps the version;
    :meth:`close` (or leaving a ``with`` block) releases it.
    """

    manifest: dict[str, Any]
    store: EmbeddingStore
    url: str = ""
    digests: ChunkDigests | None = None
    lease: Lease | None = None

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def _array(self, name: str) -> CheckedArray:
        if name not in self.store.group:
            raise self._missing(f"array {name!r}")
        return CheckedArray(self.store.group[name], name, self.digests)

    def _missing(self, what: str) -> StoreCorrupt | StoreNotFound:
        if self.digests is not None and self.digests.gone():
            return StoreNotFound(f"published version {self.version} at {self.url} was removed (aniso gc?)")
        return StoreCorrupt(f"published version {self.version} at {self.url}: {what} is missing")

    def arrays(self, *, valid: bool = True) -> dict[str, Any]:
        """The raw zarr arrays by name (what :func:`~aniso.published.loader.iter_batches` reads),
        ``valid`` only when asked for; a missing one is StoreCorrupt, or StoreNotFound when the
        version was removed."""
        return {name: self._array(name).array for name in ("embedding", "id", *(["valid"] if valid else []))}

    def needs_valid(self, only_valid: bool = True) -> bool:
        """Whether a reader skipping invalid rows must read ``valid`` (not when all rows are valid)."""
        return bool(only_valid) and not self.all_valid

    @property
    def embedding(self) -> CheckedArray:
        """The ``(N, d)`` array (slice it to read; every chunk read is checked)."""
        return self._array("embedding")

    @property
    def valid(self) -> np.ndarray:
        """``(N,)`` bool: False where the item failed upstream (its row is all zeros)."""
        return self._array("valid")[:]

    @property
    def ids(self) -> np.ndarray:
        """``(N,)`` numpy array of dtype ``object`` holding Python ``str`` (``ids[0]`` is a ``str``,
        ``ids.astype(str)`` and ``ids.tolist()`` work); zarr itself returns numpy's ``StringDType``."""
        return np.array([str(v) for v in self._array("id")[:].tolist()], dtype=object)

    def problems(self) -> list[str]:
        """Every damaged shard, named with its rows and what is wrong (empty when intact).

        Raises
        ------
        StoreNotFound
            When the version was removed since it was opened.
        """
        if self.digests is not None and self.digests.gone():
            raise StoreNotFound(f"published version {self.version} at {self.url} was removed (aniso gc?)")
        try:
            shape = self.store.shape
        except KeyError as exc:
            raise self._missing(f"array {exc}") from None
        if list(shape) != [self.manifest["n_rows"], self.manifest["dim"]]:
            return [f"{self.store.url}: shape {shape} differs from the manifest's "
                    f"({self.manifest['n_rows']}, {self.manifest['dim']})"]
        found = []
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
            elif int(np.count_nonzero(valid)) != entry["valid_rows"]:
                found.append(f"{where}: {int(np.count_nonzero(valid))} valid rows, the manifest says {entry['valid_rows']}")
            elif self.digests is not None and (bad := self._bad_chunks(entry, emb, ids, valid)):
                found.append(f"{where}: {bad}")
        version_url = self.store.url.rstrip("/").rsplit("/", 1)[0]
        found += [f"{version_url}: {p}" for p in model_problems(self.manifest, version_url, self.store.storage_options)]
        return found

    def _bad_chunks(self, entry: dict[str, Any], emb: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> str:
        """The chunks of an intact shard whose manifest digests are wrong (readers would refuse them)."""
        assert self.digests is not None
        rows = int(self.manifest["chunk_rows"])
        have = chunk_digests(emb, list(ids), valid, rows, self.digests.embedding_row_stride)
        first = entry["start"] // rows
        wrong = [f"{name} chunk {first + i}" for name in have
                 for i, (a, b) in enumerate(zip(have[name], entry["chunks"][name])) if a != b]
        return f"per-chunk digest(s) of {', '.join(wrong)} do not match the data" if wrong else ""

    def verify(self) -> None:
        """Recompute every shard checksum against the manifest; raise StoreCorrupt naming every
        damaged shard and its rows (StoreNotFound when the version was removed)."""
        found = self.problems()
        if found:
            raise StoreCorrupt(f"{len(found)} damaged shard(s): " + "; ".join(found))

    def iter_batches(self, batch_size: int, **kwargs: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunk-aware ``(ids, embeddings)`` batches (each row once per epoch across ranks), every
        chunk checked, the reader lease renewed as it goes.

        Keyword arguments (``shuffle``, ``seed``, ``epoch``, ``rank``, ``world_size``,
        ``buffer_chunks``, ``only_valid``, ``drop_last``) are those of
        :func:`aniso.published.loader.iter_batches`.
        """
        from aniso.published.loader import iter_batches

        kwargs.setdefault("all_valid", self.all_valid)
        kwargs.setdefault("digests", self.digests)
        arrays = self.arrays(valid=self.needs_valid(kwargs.get("only_valid", True)))
        batches = iter_batches(arrays, batch_size, **kwargs)  # arguments checked here, eagerly
        return self._renewing(batches)

    def _renewing(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            if self.lease is not None:
                self.lease.renew()
            yield batch

    @property
    def all_valid(self) -> bool:
        """Whether the manifest records every row as valid (readers may skip ``valid``)."""
        return self.manifest.get("valid_rows") == self.manifest.get("n_rows")

    def close(self) -> None:
        """Release the reader lease (``aniso gc`` may then remove the version once it is old)."""
        if self.lease is not None:
            self.lease.release()

    def __enter__(self) -> PublishedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_manifest(layout: DatasetLayout, version: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(version, manifest)``: from ``LATEST`` unless ``version`` is given; checked fields."""
    from_latest = version is None
    if version is None:
        pointer = read_latest(layout, options)
        if pointer is None:
            raise StoreNotFound(f"nothing published for dataset {layout.dataset!r} under {layout.root}")
        version = pointer["version"]
    manifest_url = join_url(layout.published(version), "manifest.json")
    try:
        manifest = read_json(manifest_url, options, "manifest")
    except FileNotFoundError:
        if from_latest:  # the pointer is what is wrong: it names a version that is not there
            raise StoreCorrupt(f"the LATEST pointer {layout.latest} names version {version!r}, which has no "
                               f"manifest ({manifest_url})") from None
        raise StoreNotFound(f"published version {version!r} of {layout.dataset!r} has no manifest ({manifest_url})") from None
    if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED):
        have = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreCorrupt(f"manifest {manifest_url} lacks required field(s) "
                           f"{[k for k in _REQUIRED if not isinstance(manifest, dict) or k not in manifest]} (found {have})")
    if manifest["format"] not in READABLE_FORMATS:
        raise StoreCorrupt(f"manifest {manifest_url} has format {manifest['format']!r}; this reader knows "
                           f"{list(READABLE_FORMATS)}")
    if manifest["version"] != version:
        raise StoreCorrupt(f"manifest {manifest_url} names version {manifest['version']!r}, not {version!r}")
    return version, manifest


def open_published(
    root_url: str,
    dataset: str,
    *,
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
    lease_s: float | None = LEASE_S,
) -> PublishedDataset:
    """Open the published dataset (``LATEST`` unless ``version`` is given).

    Parameters
    ----------
    lease_s
        Hold a reader lease for this many seconds, renewed while reading (``aniso gc`` keeps a
        leased version); ``None`` or ``0`` takes none.

    Raises
    ------
    StoreNotFound
        Nothing published, or no such ``version``.
    StoreCorrupt
        A truncated or malformed ``LATEST`` or manifest (the message names the file), ``LATEST``
        naming a version without a manifest, a manifest ``path`` that would leave the version
        folder, or a manifest that disagrees with itself or the arrays (shards that do not tile
        the rows, wrong counts, dtype or geometry).

    Examples
    --------
    >>> ds = open_published("s3://bucket/aniso", dataset="coco")   # doctest: +SKIP
    >>> block = ds.embedding[:4096]                                 # doctest: +SKIP
    """
    layout = DatasetLayout(root_url, dataset)
    options = storage_options or {}
    version, manifest = _open_manifest(layout, version, options)
    version_url = layout.published(version)
    manifest_url = join_url(version_url, "manifest.json")
    store = EmbeddingStore.open(_confined(version_url, manifest["path"], manifest_url), storage_options=options)
    found = manifest_problems(manifest, store)
    if found:
        raise StoreCorrupt(f"manifest {manifest_url} does not describe its data: " + "; ".join(found))
    where = f"published version {version} of {dataset!r} ({version_url})"
    digests = None
    if ChunkDigests.present(manifest):
        digests = ChunkDigests(manifest, where, lambda: _gone(manifest_url, options))
    else:
        logger.warning("%s has no per-chunk digests (format %s): reads are not checked; republish it",
                       where, manifest["format"])
    lease = Lease(layout, version, options, lease_s) if lease_s else None
    return PublishedDataset(manifest, store, version_url, digests, lease)


def _gone(manifest_url: str, options: dict[str, Any]) -> bool:
    fs, path = filesystem(manifest_url, options)
    fs.invalidate_cache()
    return not fs.exists(path)
