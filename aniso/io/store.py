"""Zarr v3 embedding stores: shard-aligned writes, completion markers, streaming reads.

Layout of one store (any fsspec URL)::

    <url>/zarr.json                 group; attrs: model, precision, config hash, ...
    <url>/embedding                 (N, d) float32/float16, chunks (chunk_rows, d), shards (shard_rows, d)
    <url>/id                        (N,) string ids
    <url>/valid                     (N,) bool: False for rows whose item failed upstream
    <url>.shards/000042.json        completion marker of shard 42, written after its data (its
                                    counts, sha256, and per-chunk digests: aniso.io.chunk_digest)

Every array's chunk codecs end with ``crc32c``, so any zarr-python 3 reader raises on a damaged
chunk. The completion markers live beside the group, not inside it: readers listing the group
see only Zarr nodes.

Rules (docs/storage.md): the chunk is the read unit and the shard the write unit; one task owns
whole shards, and a write that does not cover whole shards raises
:class:`~aniso.errors.ShardAlignmentError` (concurrent partial-shard writes silently lose data,
zarr-python #3682). A shard counts as written only once its marker exists, so a rerun skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.storage import FsspecStore, LocalStore

from aniso._fs import filesystem, is_local, join_url, open_url
from aniso.errors import InputError, ShardAlignmentError, StoreCorrupt, StoreNotFound
from aniso.io.chunk_digest import EMBEDDING_ROW_STRIDE, chunk_digests

__all__ = ["EmbeddingStore", "zarr_store", "shard_checksum", "ids_digest", "marker_url"]

logger = logging.getLogger(__name__)

_MARKERS_SUFFIX = ".shards"


def _chunk_codecs(compressor: str) -> list[Any]:
    """Bytes-to-bytes codecs of every array: optional zstd, then a crc32c checksum."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return ([] if compressor == "none" else [ZstdCodec(level=0)]) + [Crc32cCodec()]


def zarr_store(url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False):
    """A zarr store object for ``url`` (``LocalStore`` for paths, ``FsspecStore`` otherwise)."""
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)


def marker_url(store_url: str, shard: int) -> str:
    """Where the store at ``store_url`` keeps the completion marker of ``shard``."""
    return join_url(store_url.rstrip("/") + _MARKERS_SUFFIX, f"{shard:06d}.json")


def ids_bytes(ids: Sequence[str]) -> bytes:
    """A shard's ids as every digest hashes them: joined by U+001F, UTF-8."""
    return "\x1f".join(map(str, ids)).encode()


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of a shard's ids in order."""
    return hashlib.sha256(ids_bytes(ids)).hexdigest()


def shard_checksum(embedding: np.ndarray, ids: Sequence[str]) -> str:
    """sha256 over a shard's embedding bytes and ids (what the manifest records)."""
    digest = hashlib.sha256(np.ascontiguousarray(embedding).reshape(-1).view(np.uint8))  # no bytes copy
    return finish_checksum(digest, ids_bytes(ids))


def finish_checksum(rows_hash: Any, joined_ids: bytes) -> str:
    """:func:`shard_checksum` from a sha256 that has taken the shard's embedding bytes (in
    order, as stored) and the shard's :func:`ids_bytes`."""
    rows_hash.update(joined_ids)
    return rows_hash.hexdigest()


#: How long :meth:`EmbeddingStore.create` waits for a store another process is creating at once.
_CONCURRENT_CREATE_S = 10.0


def _create_arrays(group: Any, n_rows: int, dim: int, chunk_rows: int, shard_rows: int, dtype: str,
                   compressor: str) -> None:
    """The arrays of a new store: ``embedding``, ``id`` and ``valid``, sharded alike."""
    compressors = _chunk_codecs(compressor)
    group.create_array(
        "embedding", shape=(n_rows, dim), dtype=dtype, chunks=(chunk_rows, dim),
        shards=(shard_rows, dim), compressors=compressors, fill_value=0,
        dimension_names=["row", "dim"],
    )
    # ``valid`` before ``id``: a store opens once ``embedding`` and ``id`` are there, and a
    # concurrent creator must not open it in between and take every row for valid
    group.create_array(
        "valid", shape=(n_rows,), dtype=bool, chunks=(chunk_rows,), shards=(shard_rows,),
        compressors=compressors, fill_value=False, dimension_names=["row"],
    )
    group.create_array(
        "id", shape=(n_rows,), dtype=str, chunks=(chunk_rows,), shards=(shard_rows,),
        compressors=compressors, dimension_names=["row"],
    )


@dataclass
class EmbeddingStore:
    """An ``(N, d)`` embedding array with ids, written shard by shard.

    Use :meth:`create` (idempotent: reopening a matching store resumes it) or :meth:`open`.
    Iterating the store yields the valid rows chunk by chunk, so it is a re-iterable chunk
    source for :meth:`aniso.methods.Aligner.fit`.
    """

    url: str
    storage_options: dict[str, Any]
    group: Any

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        url: str,
        *,
        n_rows: int,
        dim: int,
        chunk_rows: int,
        shard_rows: int,
        dtype: str = "float32",
        compressor: str = "zstd",
        attrs: dict[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> EmbeddingStore:
        """Create the store, or reopen it when one with the same geometry exists (resume).

        Raises
        ------
        StoreCorrupt
            When a store exists at ``url`` with a different shape, chunking or dtype, or stays
            incomplete (a group without its arrays) for longer than a concurrent creator takes.
        """
        if n_rows <= 0 or dim <= 0:
            raise InputError(f"cannot create an embedding store of shape ({n_rows}, {dim}) at {url}")
        if shard_rows % chunk_rows:
            raise InputError(f"shard_rows ({shard_rows}) must be a multiple of chunk_rows ({chunk_rows})")
        chunk_rows, shard_rows_eff = cls.geometry(n_rows, chunk_rows, shard_rows)
        options = storage_options or {}
        # compare with the geometry this call would create (shards shrink to small inputs),
        # so reopening a store made from the same settings resumes it at every size
        want = ((n_rows, dim), shard_rows_eff, chunk_rows, np.dtype(dtype))
        deadline = None
        while True:
            try:
                existing = cls.open(url, storage_options=options, mode="r+")
            except StoreNotFound:
                existing = None
            except StoreCorrupt:
                # another process may be creating it (its group is there, not yet every array): wait
                # for it; a store still incomplete after the wait is corrupt and says so
                deadline = deadline or time.monotonic() + _CONCURRENT_CREATE_S
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            if existing is not None:
                have = (existing.shape, existing.shard_rows, existing.chunk_rows, existing.embedding.dtype)
                if want != have:
                    raise StoreCorrupt(
                        f"a store already exists at {url} with shape/shard/chunk/dtype {have}, expected {want}; "
                        "remove it or choose another location"
                    )
                if attrs:
                    existing.group.attrs.update(attrs)
                return existing
            # "w-" never clears what a concurrent run (the same run key) has just created; once the
            # wait is over, what is left without a group is a partial store: cleared ("w"), as always
            late = deadline is not None and time.monotonic() > deadline
            try:
                group = zarr.open_group(zarr_store(url, options), mode="w" if late else "w-",
                                        attributes=dict(attrs or {}))
                _create_arrays(group, n_rows, dim, chunk_rows, shard_rows_eff, dtype, compressor)
                break
            except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError,
                    zarr.errors.ContainsArrayAndGroupError, FileExistsError):  # zarr's "w-" refusals
                deadline = deadline or time.monotonic() + _CONCURRENT_CREATE_S  # theirs: open it
                time.sleep(0.1)
        logger.info("created store %s: (%d, %d) %s, shards of %d rows", url, n_rows, dim, dtype, shard_rows_eff)
        return cls(url, options, group)

    @staticmethod
    def geometry(n_rows: int, chunk_rows: int, shard_rows: int) -> tuple[int, int]:
        """``(chunk_rows, shard_rows)`` a store of ``n_rows`` rows is created with.

        The shard shrinks to the input (rounded up to whole chunks) so a small input is one
        small shard; the chunk never exceeds the shard.
        """
        chunk = min(chunk_rows, shard_rows)
        return chunk, min(shard_rows, max(chunk, n_rows + (-n_rows) % chunk))

    @classmethod
    def open(cls, url: str, *, storage_options: dict[str, Any] | None = None, mode: str = "r") -> EmbeddingStore:
        """Open an existing store; a missing or malformed one raises a clear aniso error."""
        options = storage_options or {}
        fs, path = filesystem(url, options)
        if not fs.exists(join_url(path, "zarr.json")):
            raise StoreNotFound(f"no embedding store at {url} (zarr.json missing)")
        try:
            group = zarr.open_group(zarr_store(url, options, read_only=mode == "r"), mode=mode)
            missing = {name for name in ("embedding", "id") if name not in group}
        except (ValueError, TypeError, KeyError, json.JSONDecodeError, zarr.errors.BaseZarrError) as exc:
            raise StoreCorrupt(f"embedding store at {url} has unreadable metadata: {exc}") from exc
        if missing:
            raise StoreCorrupt(f"embedding store at {url} lacks array(s) {sorted(missing)}")
        obj = cls(url, options, group)
        if obj.embedding.ndim != 2 or obj.ids.shape != (obj.shape[0],):
            raise StoreCorrupt(
                f"embedding store at {url} is inconsistent: embedding {obj.embedding.shape}, id {obj.ids.shape}"
            )
        return obj

    # -- geometry --------------------------------------------------------------------------
    # The arrays are opened once per store object: their metadata (shape, chunks, dtype) is fixed
    # when the store is created, and each ``group[...]`` reads it again from storage (a frozen-model
    # run spent a sixth of its apply stage re-reading zarr.json through shard_range).
    @cached_property
    def embedding(self):
        return self.group["embedding"]

    @cached_property
    def ids(self):
        return self.group["id"]

    @cached_property
    def _valid(self):
        """The ``valid`` array, or None for a store without one (every row valid)."""
        return self.group["valid"] if "valid" in self.group else None

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.embedding.shape)  # type: ignore[return-value]

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    @property
    def shard_rows(self) -> int:
        shards = self.embedding.shards
        return int(shards[0] if shards else self.embedding.chunks[0])

    @property
    def chunk_rows(self) -> int:
        return int(self.embedding.chunks[0])

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.n_shards:
            raise InputError(f"shard {shard} out of range for {self.url} ({self.n_shards} shards)")
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)

    # -- writing ---------------------------------------------------------------------------
    def _check_aligned(self, start: int, stop: int) -> None:
        aligned_start = start % self.shard_rows == 0
        aligned_stop = stop % self.shard_rows == 0 or stop == self.n_rows
        if not (aligned_start and aligned_stop and 0 <= start < stop <= self.n_rows):
            raise ShardAlignmentError(
                f"write of rows [{start}, {stop}) to {self.url} is not aligned to its shards of "
                f"{self.shard_rows} rows (N={self.n_rows}); one task must write whole shards"
            )

    def write_rows(self, start: int, embedding: np.ndarray, ids: Sequence[str], valid: np.ndarray | None = None) -> None:
        """Write rows ``[start, start + len(embedding))``; must cover whole shards."""
        stop = start + int(embedding.shape[0])
        self._check_aligned(start, stop)
        if embedding.shape[1:] != (self.dim,):
            raise InputError(f"rows for {self.url} have dimension {embedding.shape[1:]}, expected ({self.dim},)")
        if len(ids) != embedding.shape[0]:
            raise InputError(f"{len(ids)} ids for {embedding.shape[0]} rows written to {self.url}")
        self.embedding[start:stop] = embedding.astype(self.embedding.dtype, copy=False)
        self.ids[start:stop] = np.asarray(ids, dtype=str)
        if self._valid is not None:
            self._valid[start:stop] = np.ones(stop - start, bool) if valid is None else valid

    def write_shard(
        self,
        shard: int,
        embedding: np.ndarray,
        ids: Sequence[str],
        *,
        valid: np.ndarray | None = None,
        stats: dict[str, Any] | None = None,
        checksum: str | None = None,
    ) -> dict[str, Any]:
        """Write one whole shard, then its completion marker; returns the marker.

        ``checksum``: :func:`shard_checksum` of ``embedding`` and ``ids`` when the caller has
        hashed them already (the apply stage does, block by block, while it transforms them); it
        must be of ``embedding`` as stored (this store's dtype). Otherwise the checksum is computed
        on a second thread while the rows are written (sha256 releases the GIL).
        """
        start, stop = self.shard_range(shard)
        if embedding.shape[0] != stop - start:
            raise ShardAlignmentError(
                f"shard {shard} of {self.url} holds rows [{start}, {stop}) ({stop - start} rows); "
                f"got {embedding.shape[0]}"
            )
        stored = embedding.astype(self.embedding.dtype, copy=False)
        if checksum is not None:
            if stored is not embedding:
                raise InputError(f"a checksum of shard {shard} for {self.url} must be of its rows as stored "
                                 f"({self.embedding.dtype}), not {embedding.dtype}")
            self.write_rows(start, stored, ids, valid)
            return self.mark_shard(shard, stored, ids, valid=valid, stats=stats, checksum=checksum)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aniso-checksum") as pool:
            pending = pool.submit(shard_checksum, stored, ids)
            self.write_rows(start, stored, ids, valid)
            return self.mark_shard(shard, stored, ids, valid=valid, stats=stats, checksum=pending.result())

    def mark_shard(
        self,
        shard: int,
        embedding: np.ndarray,
        ids: Sequence[str],
        *,
        valid: np.ndarray | None = None,
        stats: dict[str, Any] | None = None,
        checksum: str | None = None,
    ) -> dict[str, Any]:
        """Write the completion marker of a shard whose data (``embedding``, ``ids``, ``valid``:
        as stored) is in place, e.g. files carried over from another store; returns it.

        ``checksum``: :func:`shard_checksum` of exactly these ``embedding`` and ``ids``, when the
        caller has just computed it (a carried shard checked against its manifest), else computed here.
        """
        start, stop = self.shard_range(shard)
        stored = embedding.astype(self.embedding.dtype, copy=False)
        flags = np.ones(stop - start, bool) if valid is None else np.asarray(valid, bool)
        return self.write_marker(shard, {
            "valid_rows": int(stop - start if valid is None else np.count_nonzero(valid)),
            "sha256": checksum if checksum is not None and stored is embedding else shard_checksum(stored, ids),
            # lets a later stage check ids against this shard from the markers alone
            "ids_sha256": ids_digest(ids),
            # what each chunk must read back as: the published manifest carries these to readers
            "chunks": chunk_digests(stored, ids, flags, self.chunk_rows),
            "chunks_row_stride": EMBEDDING_ROW_STRIDE,
            "stats": stats or {},
        })

    def write_marker(self, shard: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Write the completion marker of ``shard`` from its figures (``valid_rows``, ``sha256``,
        ``ids_sha256``, ``chunks``, ``chunks_row_stride``, ``stats``) and return it.

        :meth:`mark_shard` computes them from the shard's rows; a shard carried over as a hard link
        of an earlier store's files takes them from that store's marker (:mod:`aniso.stages.carry`).
        """
        start, stop = self.shard_range(shard)
        marker = {"shard": shard, "start": start, "stop": stop, "rows": stop - start, **fields}
        with open_url(self._marker_url(shard), "w", self.storage_options) as f:
            json.dump(marker, f, sort_keys=True)
        return marker

    @property
    def markers_url(self) -> str:
        """Folder of the completion markers, beside the Zarr group (``<url>.shards``)."""
        return self.url.rstrip("/") + _MARKERS_SUFFIX

    def _marker_url(self, shard: int) -> str:
        return marker_url(self.url, shard)

    # -- completion ------------------------------------------------------------------------
    def completed_shards(self) -> set[int]:
        """Shards whose completion marker exists."""
        fs, path = filesystem(self.markers_url, self.storage_options)
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            return set()
        done = set()
        for name in names:
            stem = name.rstrip("/").rsplit("/", 1)[-1]
            if stem.endswith(".json") and stem[:-5].isdigit():
                done.add(int(stem[:-5]))
        return {s for s in done if s < self.n_shards}

    def is_complete(self) -> bool:
        return len(self.completed_shards()) == self.n_shards

    def marker(self, shard: int) -> dict[str, Any]:
        try:
            with open_url(self._marker_url(shard), "r", self.storage_options) as f:
                return json.load(f)
        except FileNotFoundError:
            raise StoreNotFound(f"shard {shard} of {self.url} has no completion marker") from None
        except json.JSONDecodeError as exc:
            raise StoreCorrupt(f"completion marker of shard {shard} in {self.url} is corrupt: {exc}") from exc

    def markers(self) -> list[dict[str, Any]]:
        return [self.marker(s) for s in range(self.n_shards)]

    # -- reading ---------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int, *, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(embedding, ids, valid)`` for rows ``[start, stop)``; corrupt data raises StoreCorrupt.

        ids come back as an object array of Python strings (empty when ``with_ids`` is false).
        """
        try:
            emb = self.embedding[start:stop]
            raw_ids = self.ids[start:stop] if with_ids else np.empty(0, object)
            valid = self.read_valid(start, stop)
        except (ValueError, RuntimeError, KeyError) as exc:
            # Decoding failures (checksums, codecs) mean damaged data; OSError is left to
            # propagate because a storage outage is transient and the task may retry.
            raise StoreCorrupt(f"rows [{start}, {stop}) of {self.url} are unreadable (truncated or corrupted): {exc}") from exc
        ids = np.array([str(v) for v in raw_ids.tolist()], dtype=object)
        return emb, ids, valid

    def read_rows_at(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings at sorted global ``rows``, every chunk they touch fetched in one call
        (concurrently on object storage); corrupt data raises StoreCorrupt."""
        try:
            return self.embedding.get_orthogonal_selection((np.asarray(rows, dtype=np.int64), slice(None)))
        except (ValueError, RuntimeError) as exc:
            raise StoreCorrupt(f"sampled rows of {self.url} are unreadable (truncated or corrupted): {exc}") from exc

    def read_valid(self, start: int, stop: int) -> np.ndarray:
        """The ``valid`` flags of rows ``[start, stop)`` (all true for a store without them)."""
        try:
            return self._valid[start:stop] if self._valid is not None else np.ones(stop - start, bool)
        except (ValueError, RuntimeError) as exc:
            raise StoreCorrupt(f"valid flags [{start}, {stop}) of {self.url} are unreadable: {exc}") from exc

    def read_shard(self, shard: int, *, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(embedding, ids, valid)`` of one shard (see :meth:`read_rows`)."""
        return self.read_rows(*self.shard_range(shard), with_ids=with_ids)

    def iter_shards(self, *, only_valid: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(shard, embedding, ids)`` per shard, valid rows only by default."""
        for shard in range(self.n_shards):
            emb, ids, valid = self.read_shard(shard)
            if only_valid and not valid.all():
                emb, ids = emb[valid], ids[valid]
            yield shard, emb, ids

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, emb, _ in self.iter_shards():
            yield emb

    def count_valid(self) -> int:
        return sum(m["valid_rows"] for m in self.markers())
