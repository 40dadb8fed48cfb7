"""Listing a corpus and cutting it into a deterministic shard plan.

A corpus URL is a single file or a folder (searched recursively, files sorted by path). Items are
numbered in that order — rows of each text file, image files of a folder, samples of each tar —
and shard ``k`` covers items ``[k·items_per_shard, (k+1)·items_per_shard)``. Shard ids therefore
depend only on the corpus and ``corpus.items_per_shard``, never on worker count or batch size.

Planning reads ids (to find duplicates up front, so every shard knows which of its items repeat an
earlier id) and, for line-based text files, the byte range of each shard so a shard reads only its
own bytes.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow.parquet as pq

from aniso._fs import filesystem, join_url
from aniso.config import CorpusSettings
from aniso.corpus._formats import (
    IMAGE_EXTENSIONS,
    TAR_EXTENSION,
    TEXT_FORMATS,
    TRUNCATED,
    FileRange,
    parse_json_line,
    read_csv_rows,
    tar_item_id,
    tar_samples,
)
from aniso.errors import InputError

__all__ = ["ShardSpec", "Unit", "list_corpus", "plan_shards", "plan_digest"]

logger = logging.getLogger(__name__)

Modality = Literal["text", "image"]


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: a fixed slice of the corpus, small enough to send to a worker.

    ``duplicates`` are positions (within the shard) whose id repeats an earlier item's id; the
    reader records them as failed instead of reading them, with the matching ``duplicate_notes``
    entry (where the id was first seen) in the reason. ``storage_options`` are an execution
    detail and take no part in equality or :func:`plan_digest`.
    """

    index: int
    shard_id: str
    modality: Modality
    corpus_url: str
    ranges: tuple[FileRange, ...]
    n_items: int
    text_field: str = "text"
    id_field: str | None = "id"
    duplicates: tuple[tuple[int, str], ...] = ()
    tar_ids: str = "key"
    duplicate_notes: tuple[str, ...] = field(default=(), compare=False, hash=False, repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass
class Unit:
    """A file's items as found by listing (internal to planning)."""

    url: str
    rel: str
    format: str
    ids: list[str]
    lines: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # byte offset of each row, plus the end
    content: str = ""


def _detect(rel: str, modality: Modality) -> str | None:
    ext = posixpath.splitext(rel)[1].lower()
    if ext == TAR_EXTENSION:
        return "webdataset"
    if modality == "image":
        return "image" if ext in IMAGE_EXTENSIONS else None
    return TEXT_FORMATS.get(ext)


def _record_id(record: Any, id_field: str | None, default: str) -> str:
    if id_field and isinstance(record, dict) and record.get(id_field) not in (None, ""):
        return str(record[id_field])
    return default


def _scan_lines(fs, path: str, rel: str, fmt: str, id_field: str | None) -> Unit:
    unit = Unit(url="", rel=rel, format=fmt, ids=[])
    offset = 0
    with fs.open(path, "rb") as f:
        for lineno, raw in enumerate(f):
            if raw.strip():
                default = f"{rel}:{lineno}"
                record_id = default
                if fmt == "jsonl" and id_field:
                    record_id = _record_id(parse_json_line(raw)[0], id_field, default)
                unit.ids.append(record_id)
                unit.lines.append(lineno)
                unit.offsets.append(offset)
            offset += len(raw)
    unit.offsets.append(offset)
    return unit


def _scan_file(fs, path: str, rel: str, fmt: str, settings: CorpusSettings) -> Unit:
    if fmt in ("jsonl", "txt"):
        return _scan_lines(fs, path, rel, fmt, settings.id_field)
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            n = pf.metadata.num_rows
            names = pf.schema_arrow.names
            ids = [f"{rel}:{i}" for i in range(n)]
            if settings.id_field and settings.id_field in names:
                column = pf.read(columns=[settings.id_field]).column(0).to_pylist()
                ids = [str(v) if v not in (None, "") else ids[i] for i, v in enumerate(column)]
        return Unit(url="", rel=rel, format=fmt, ids=ids)
    if fmt == "csv":
        with fs.open(path, "rb") as f:
            rows = read_csv_rows(f.read(), delimiter="\t" if rel.lower().endswith(".tsv") else ",")
        ids = [_record_id(row, settings.id_field, f"{rel}:{i}") for i, row in enumerate(rows)]
        return Unit(url="", rel=rel, format=fmt, ids=ids)
    if fmt == "webdataset":
        with fs.open(path, "rb") as f:
            try:
                samples = tar_samples(f)
            except tarfile.TarError as exc:
                raise InputError(f"{rel}: not a readable tar file ({exc})") from None
        return Unit(url="", rel=rel, format=fmt, ids=[f"{rel}{key}" if key.startswith(TRUNCATED)
                                                       else tar_item_id(rel, key, settings.tar_ids) for key, _ in samples])
    if fmt == "image":
        return Unit(url="", rel=rel, format=fmt, ids=[posixpath.splitext(rel)[0]])
    raise InputError(f"{rel}: unsupported format {fmt!r}")


def list_corpus(
    url: str, modality: Modality, settings: CorpusSettings, storage_options: dict[str, Any] | None = None
) -> list[Unit]:
    """Every readable file under ``url`` (or ``url`` itself), with its item ids, in path order."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"corpus not found: {url}")
    if fs.isdir(path):
        infos = fs.find(path, detail=True)
        found = sorted(p for p in infos if not posixpath.basename(p).startswith("."))
        base = path.rstrip("/")
        entries = [(p, posixpath.relpath(p, base), infos[p]) for p in found]
    else:
        entries = [(path, posixpath.basename(path), fs.info(path))]
    units = []
    for file_path, rel, info in entries:
        fmt = _detect(rel, modality)
        if fmt is None:
            continue
        unit = _scan_file(fs, file_path, rel, fmt, settings)
        unit.url = join_url(url, rel) if fs.isdir(path) else url
        unit.content = _content_tag(info)
        units.append(unit)
    if not units:
        kinds = "jsonl/parquet/csv/txt or webdataset tars" if modality == "text" else "jpg/png/webp or webdataset tars"
        raise InputError(f"no {modality} files ({kinds}) found at {url}")
    return units


def _content_tag(info: dict[str, Any]) -> str:
    """What identifies a file's version without reading it: size plus ETag (object stores) or
    modification time. A touched file is re-embedded; an edited one can never be mistaken for
    the old one."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(version).strip(chr(34))}"


def _ranges_for(units: list[Unit], lo: int, hi: int, starts: list[int]) -> tuple[FileRange, ...]:
    out = []
    for k, unit in enumerate(units):
        u0, u1 = starts[k], starts[k] + len(unit.ids)
        a, b = max(lo, u0), min(hi, u1)
        if a >= b:
            continue
        start, stop = a - u0, b - u0
        extra: dict[str, int] = {}
        if unit.format in ("jsonl", "txt"):
            extra = {"byte_start": unit.offsets[start], "byte_end": unit.offsets[stop] if stop < len(unit.ids) else unit.offsets[-1], "line_start": unit.lines[start]}
        out.append(FileRange(url=unit.url, rel=unit.rel, format=unit.format, start=start, stop=stop,
                             content=unit.content, **extra))
    return tuple(out)


def plan_shards(
    url: str,
    settings: CorpusSettings | None = None,
    *,
    modality: Modality = "text",
    storage_options: dict[str, Any] | None = None,
) -> list[ShardSpec]:
    """Cut the corpus at ``url`` into shards of ``settings.items_per_shard`` items.

    Parameters
    ----------
    url
        A file or folder, local or any fsspec URL.
    settings
        ``text_field``, ``id_field`` and ``items_per_shard`` are used.
    modality
        ``"text"`` reads jsonl / parquet / csv / txt files and the captions (``.txt``/``.json``)
        of webdataset tars; ``"image"`` reads jpg/png/webp files and the images of tars.
    storage_options
        Passed to fsspec (e.g. ``endpoint_url``); carried by each spec for its reader.

    Returns
    -------
    list of ShardSpec
        Deterministic: shard ``k`` has id ``<modality>-<k:05d>`` and the same items whatever
        the execution settings.

    Raises
    ------
    InputError
        If ``url`` does not exist or holds no file of the modality.
    """
    settings = settings or CorpusSettings()
    units = list_corpus(url, modality, settings, storage_options)
    starts, total = [], 0
    for unit in units:
        starts.append(total)
        total += len(unit.ids)
    first_seen: dict[str, int] = {}  # id → index of the unit it was first seen in
    duplicates: dict[int, tuple[str, str]] = {}  # position → (id, note)
    notes: dict[tuple[int, int], str] = {}  # one note per pair of files, shared by their repeats
    for k, unit in enumerate(units):
        for j, item_id in enumerate(unit.ids):
            if item_id in first_seen:
                pair = (first_seen[item_id], k)
                if pair not in notes:
                    notes[pair] = _duplicate_note(units[pair[0]], unit, settings)
                duplicates[starts[k] + j] = (item_id, notes[pair])
            else:
                first_seen[item_id] = k
    across = [note for _, note in duplicates.values() if "tar_ids" in note]
    if across:
        logger.warning("%s: %d sample(s) repeat the key of a sample in another tar (the first: %s)", url,
                       len(across), across[0])
    per = settings.items_per_shard
    specs = []
    for index, lo in enumerate(range(0, total, per)):
        hi = min(lo + per, total)
        specs.append(
            ShardSpec(
                index=index,
                shard_id=f"{modality}-{index:05d}",
                modality=modality,
                corpus_url=url,
                ranges=_ranges_for(units, lo, hi, starts),
                n_items=hi - lo,
                text_field=settings.text_field,
                id_field=settings.id_field,
                duplicates=tuple((p - lo, i) for p, (i, _) in sorted(duplicates.items()) if lo <= p < hi),
                tar_ids=settings.tar_ids,
                duplicate_notes=tuple(note for p, (_, note) in sorted(duplicates.items()) if lo <= p < hi),
                storage_options=dict(storage_options or {}),
            )
        )
    logger.info("planned %d %s shard(s) over %d item(s) in %d file(s) at %s (%d duplicate id(s))",
                len(specs), modality, total, len(units), url, len(duplicates))
    return specs


def plan_digest(specs: list[ShardSpec]) -> str:
    """A stable hash of a plan (what each shard covers; no storage options) for run keys."""
    h = hashlib.sha256()
    for spec in specs:
        # tar_ids only where it is not the default, so plans digested before it keep their digest
        h.update(repr((spec.shard_id, spec.modality, spec.n_items, spec.text_field, spec.id_field, spec.duplicates,
                       [(r.rel, r.format, r.start, r.stop, r.content) for r in spec.ranges],
                       *(() if spec.tar_ids == "key" else (spec.tar_ids,)))).encode())
    return h.hexdigest()[:16]


def _duplicate_note(first: Unit, unit: Unit, settings: CorpusSettings) -> str:
    """Where a repeated id was first seen, and, for keys repeated across tars, the way out."""
    if first is unit:
        return f"first seen earlier in {unit.rel}"
    note = f"first seen in {first.rel}"
    if first.format == unit.format == "webdataset" and settings.tar_ids == "key":
        note += ("; webdataset keys repeat across tars: corpus.tar_ids=path names each sample "
                 "<tar path without .tar>/<key>")
    return note
