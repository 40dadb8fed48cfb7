"""Export a published version for tools people already use: clip-retrieval/autofaiss and webdataset.

Both formats stream one part at a time (a part is one shard of the published version, so memory
is one shard), skip invalid rows, and are resumable and verified:

* a part's file is written whole (locally a temp file renamed into place; one PUT on object
  storage), read back and compared with the rows it should hold, and only then is its marker
  ``_export/part-<i>.json`` (rows, sha256 of the file bytes, and the source: format, dataset,
  version, shard checksum) written. A rerun skips parts whose marker names the same source and
  whose file still has the recorded size;
* an export folder holds one export: before anything is written, a folder whose ``export.json``
  or part markers name another format, dataset or version (or no source: markers of an older
  aniso) is refused with a :class:`~aniso.errors.ConfigError` naming what it holds and the fix
  (another ``--out``, or remove the folder). Refreshing in place could leave the other version's
  surplus parts beside the new ones, so an export is never reused across versions;
* ``export.json`` (format, source version, parts) is written last; :func:`verify_export` re-hashes
  every file against it and reports files of the export's layout that it does not list.

Layouts::

    clip-retrieval:  <out>/img_emb/img_emb_<i>.npy          (n_i, d) float16
                     <out>/metadata/metadata_<i>.parquet    column ``id`` (+ ``row``), same order
    webdataset:      <out>/<i:06d>.tar                      per row: <key>.npy (float16 (d,)), <key>.json {"id", "row"}

In tars the key is the id when it is a safe webdataset key (letters, digits, ``_``, ``-``) that
does not have the form ``row<digits>``, else ``row<row>`` (the published row number). Published
ids are unique and row numbers are, and the two kinds of key cannot meet, so no two samples share
a key (each written tar is also read back the way webdataset groups members, and refused if they
do). The id is always in the ``.json`` member.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from typing import Any, Literal

import numpy as np

from aniso._fs import filesystem, join_url, open_url, write_atomic
from aniso.errors import ConfigError, StoreCorrupt
from aniso.io.layout import DatasetLayout
from aniso.published.dataset import PublishedDataset, open_published

__all__ = ["export_published", "verify_export", "FORMATS"]

logger = logging.getLogger(__name__)

FORMATS = ("clip-retrieval", "webdataset")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
#: Keys of this form are reserved for rows whose id is not a safe key (see the module docstring).
_ROW_KEY = re.compile(r"^row[0-9]+$")
_MANIFEST = "export.json"
_MARKERS = "_export"


def tar_key(sample_id: str, row: int) -> str:
    """The webdataset key of published row ``row`` with id ``sample_id`` (unique by construction)."""
    return sample_id if _SAFE_KEY.match(sample_id) and not _ROW_KEY.match(sample_id) else f"row{row}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _parquet_bytes(ids: list[str], rows: np.ndarray) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "row": pa.array(rows, pa.int64())}), buf)
    return buf.getvalue()


def _tar_bytes(ids: list[str], rows: np.ndarray, emb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, row, vec in zip(ids, rows.tolist(), emb):
            key = tar_key(i, row)
            for ext, payload in (("npy", _npy_bytes(vec)), ("json", json.dumps({"id": i, "row": row}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _read_back_tar(data: bytes, part: int, dim: int) -> tuple[list[str], np.ndarray]:
    """A tar's ``(ids, vectors)`` read as webdataset reads it: members grouped into samples by
    key; a key that names two samples, or a sample without exactly its .npy and .json, is refused."""
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if key not in samples:
                samples[key] = {}
                order.append(key)
            elif order[-1] != key or ext in samples[key]:
                raise StoreCorrupt(f"export part {part} (webdataset): key {key!r} names more than one sample")
            samples[key][ext] = tar.extractfile(member).read()
    ids, vecs = [], []
    for key in order:
        if sorted(samples[key]) != ["json", "npy"]:
            raise StoreCorrupt(f"export part {part} (webdataset): sample {key!r} holds {sorted(samples[key])}, "
                               "not one .npy and one .json")
        ids.append(json.loads(samples[key]["json"])["id"])
        vecs.append(np.load(io.BytesIO(samples[key]["npy"])))
    return ids, np.stack(vecs) if vecs else np.empty((0, dim), np.float16)


def _files_of(fmt: str, out: str, part: int) -> dict[str, str]:
    if fmt == "clip-retrieval":
        return {"embeddings": join_url(out, "img_emb", f"img_emb_{part}.npy"),
                "metadata": join_url(out, "metadata", f"metadata_{part}.parquet")}
    return {"tar": join_url(out, f"{part:06d}.tar")}


def _marker_url(out: str, part: int) -> str:
    return join_url(out, _MARKERS, f"part-{part:06d}.json")


def _load_json(url: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON object at ``url``; None when absent, ``{}`` when it is not a JSON object (not
    written by aniso, whose writes are atomic: something to refuse, not to overwrite)."""
    try:
        payload = json.loads(_read(url, options))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _existing_markers(out: str, options: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The part markers already in ``out``, by part."""
    fs, path = filesystem(join_url(out, _MARKERS), options)
    fs.invalidate_cache(path)  # a cached listing (object stores) would miss what another run wrote
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return {}
    markers = {}
    for name in sorted(names):
        match = re.search(r"part-(\d+)\.json$", name)
        marker = _load_json(join_url(out, _MARKERS, match.group(0)), options) if match else None
        if marker is not None:
            markers[int(match.group(1))] = marker
    return markers


def _describe(source: dict[str, Any] | None) -> str:
    if not isinstance(source, dict) or not all(source.get(k) for k in ("format", "dataset", "version")):
        return "an export with no recorded source (written by an older aniso, or not by aniso)"
    return f"a {source.get('format')} export of {source.get('dataset')} version {source.get('version')}"


def _check_target(out: str, source: dict[str, Any], options: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The reusable part markers of ``out``; ConfigError when it holds another export (see the
    module docstring), before anything is written."""
    wanted = {k: source[k] for k in ("format", "dataset", "version")}
    found = _load_json(join_url(out, _MANIFEST), options)
    held = [({k: found.get(k) for k in wanted}, join_url(out, _MANIFEST))] if found is not None else []
    markers = _existing_markers(out, options)
    held += [(m.get("source") if isinstance(m.get("source"), dict) else None, _marker_url(out, p))
             for p, m in markers.items()]
    for got, url in held:
        if got is None or {k: got.get(k) for k in wanted} != wanted:
            raise ConfigError(
                f"--out {out} already holds {_describe(got)} ({url}); an export folder holds one export: "
                f"choose another --out for {_describe(source)}, or remove {out} first"
            )
    return markers


def _check_out(root: str, dataset: str, out: str, options: dict[str, Any]) -> None:
    """``out`` must be a folder (or nothing yet) outside the dataset it exports: never written
    into the dataset it reads (its versions are immutable, and ``aniso gc`` would remove an export
    found there)."""
    out_fs, out_path = filesystem(out, options)
    if out_fs.isfile(out_path) and not out_fs.isdir(out_path):
        raise ConfigError(f"--out {out} is a file; an export is written to a folder")
    base_fs, base_path = filesystem(DatasetLayout(root, dataset).base, options)
    out_path, base_path = out_path.rstrip("/"), base_path.rstrip("/")
    if out_fs.protocol == base_fs.protocol and (out_path == base_path or out_path.startswith(base_path + "/")
                                                 or base_path.startswith(out_path + "/")):
        raise ConfigError(f"--out {out} overlaps the dataset folder {join_url(root, dataset)}; "
                          "export to a folder outside it")


def _intact(out: str, marker: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether every file a marker records is present with its recorded size."""
    try:
        for entry in marker["files"].values():
            fs, path = filesystem(join_url(out, entry["path"]), options)
            if not fs.exists(path) or int(fs.info(path)["size"]) != entry["size"]:
                return False
    except (KeyError, TypeError, AttributeError, ValueError):
        return False
    return True


def _write_part(fmt: str, out: str, part: int, ids: list[str], rows: np.ndarray, emb: np.ndarray,
                options: dict[str, Any], source: dict[str, Any] | None = None) -> dict[str, Any]:
    urls = _files_of(fmt, out, part)
    if fmt == "clip-retrieval":
        blobs = {"embeddings": _npy_bytes(emb), "metadata": _parquet_bytes(ids, rows)}
    else:
        blobs = {"tar": _tar_bytes(ids, rows, emb)}
    files, stored = {}, {}
    for name, data in blobs.items():
        write_atomic(urls[name], data, options)
        stored[name] = _read(urls[name], options)  # verify what storage now holds, not what we meant
        if stored[name] != data:
            raise StoreCorrupt(f"export part {part}: {urls[name]} does not read back as written")
        files[name] = {"path": urls[name][len(out):].lstrip("/"), "size": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}
    _check_part(fmt, stored, ids, emb, part)
    marker = {"part": part, "rows": len(ids), "files": files, "source": source}
    write_atomic(_marker_url(out, part), json.dumps(marker, sort_keys=True).encode(), options)
    return marker


def _read(url: str, options: dict[str, Any]) -> bytes:
    with open_url(url, "rb", options) as f:
        return f.read()


def _check_part(fmt: str, blobs: dict[str, bytes], ids: list[str], emb: np.ndarray, part: int) -> None:
    """Decode a written part with the readers its users have and compare with the source rows."""
    if fmt == "clip-retrieval":
        import pyarrow.parquet as pq

        got = np.load(io.BytesIO(blobs["embeddings"]))
        got_ids = pq.read_table(io.BytesIO(blobs["metadata"])).column("id").to_pylist()
    else:
        got_ids, got = _read_back_tar(blobs["tar"], part, emb.shape[1])
    if got_ids != ids or got.shape != emb.shape or not np.array_equal(got, emb):
        raise StoreCorrupt(f"export part {part} ({fmt}) does not decode to the rows it was written from")


def export_published(
    root: str,
    dataset: str,
    out: str,
    fmt: Literal["clip-retrieval", "webdataset"],
    *,
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
    verify_source: bool = True,
) -> dict[str, Any]:
    """Export a published version to ``out``; resumable (finished parts are skipped).

    Returns the export manifest (also written to ``<out>/export.json``). With ``verify_source``
    each shard is checked against the published checksum before it is exported.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    options = storage_options or {}
    _check_out(root, dataset, out, options)  # before the lease: a refused --out leaves nothing behind
    with open_published(root, dataset, version=version, storage_options=options) as ds:
        return _export_version(ds, dataset, out, fmt, options, verify_source)


def _export_version(ds: PublishedDataset, dataset: str, out: str, fmt: str, options: dict[str, Any],
                    verify_source: bool) -> dict[str, Any]:
    """The export itself, of an opened (leased) version; the lease is renewed part by part."""
    from aniso.io.store import shard_checksum

    source = {"format": fmt, "dataset": dataset, "version": ds.version}
    markers = _check_target(out, source, options)
    parts = []
    for entry in ds.manifest["shards"]:
        part, start, stop = entry["shard"], entry["start"], entry["stop"]
        marker = markers.get(part)
        part_source = {**source, "shard_sha256": entry["sha256"]}
        if marker is None or marker.get("source") != part_source or not _intact(out, marker, options):
            emb, ids, valid = ds.store.read_rows(start, stop)
            if verify_source and shard_checksum(emb, list(ids)) != entry["sha256"]:
                raise StoreCorrupt(f"shard {part} (rows [{start}, {stop})) of {ds.store.url} does not match "
                                   "its published checksum; not exporting damaged data")
            rows = np.arange(start, stop)[valid]
            marker = _write_part(fmt, out, part, [str(i) for i in ids[valid]], rows,
                                 emb[valid].astype(np.float16), options, part_source)
            logger.info("exported part %d (%d rows) to %s", part, marker["rows"], out)
        if ds.lease is not None:
            ds.lease.renew()
        parts.append(marker)
    manifest = {"format": fmt, "dataset": dataset, "version": ds.version, "dim": ds.manifest["dim"],
                "dtype": "float16", "rows": sum(p["rows"] for p in parts),
                "skipped_invalid_rows": ds.manifest["n_rows"] - sum(p["rows"] for p in parts), "parts": parts}
    write_atomic(join_url(out, _MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode(), options)
    return manifest


def _layout_files(fmt: str, out: str, options: dict[str, Any]) -> set[str]:
    """Paths (relative to ``out``) of the files in ``out`` that a reader of ``fmt`` would take as
    parts: what an export folder must hold no more of than its ``export.json`` lists."""
    patterns = ({"img_emb": r"img_emb_\d+\.npy$", "metadata": r"metadata_\d+\.parquet$"} if fmt == "clip-retrieval"
                else {"": r"\d+\.tar$"})
    found = set()
    for folder, pattern in patterns.items():
        fs, path = filesystem(join_url(out, folder) if folder else out, options)
        fs.invalidate_cache(path)
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            continue
        found |= {f"{folder}/{n.rsplit('/', 1)[-1]}".lstrip("/") for n in names
                  if re.fullmatch(pattern, n.rsplit("/", 1)[-1])}
    return found


def verify_export(out: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Re-hash every exported file against ``export.json``; the list of problems (empty: intact).

    A file of the export's layout that ``export.json`` does not list (a part left by something
    else) is a problem too: the tools that read the folder would read it as data.
    """
    options = storage_options or {}
    try:
        manifest = json.loads(_read(join_url(out, _MANIFEST), options))
    except FileNotFoundError:
        return [f"{out}: no export.json (export unfinished)"]
    except json.JSONDecodeError as exc:
        return [f"{out}/export.json is not valid JSON: {exc}"]
    problems = []
    for part in manifest["parts"]:
        for entry in part["files"].values():
            url = join_url(out, entry["path"])
            try:
                data = _read(url, options)
            except FileNotFoundError:
                problems.append(f"part {part['part']}: {url} is missing")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(f"part {part['part']}: {url} does not match its sha256")
    listed = {entry["path"] for part in manifest["parts"] for entry in part["files"].values()}
    for extra in sorted(_layout_files(manifest["format"], out, options) - listed):
        problems.append(f"{join_url(out, extra)} is not part of this export (export.json does not list it)")
    return problems
