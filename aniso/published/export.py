"""Export a published version for tools people already use: clip-retrieval/autofaiss and webdataset.

Both formats stream one part at a time (a part is one shard of the published version, so memory
is one shard), skip invalid rows, and are resumable and verified:

* a part's file is written whole (locally a temp file renamed into place; one PUT on object
  storage), read back and compared with the rows it should hold, and only then is its marker
  ``_export/part-<i>.json`` (rows, sha256 of the file bytes) written. A rerun skips parts whose
  marker exists and whose file still has the recorded size;
* ``export.json`` (format, source version, parts) is written last; :func:`verify_export` re-hashes
  every file against it.

Layouts::

    clip-retrieval:  <out>/img_emb/img_emb_<i>.npy          (n_i, d) float16
                     <out>/metadata/metadata_<i>.parquet    column ``id`` (+ ``row``), same order
    webdataset:      <out>/<i:06d>.tar                      per row: <key>.npy (float16 (d,)), <key>.json {"id", "row"}

In tars the key is the id when it is a safe webdataset key (letters, digits, ``_``, ``-``),
else ``row<row>``; the id is always in the ``.json`` member.
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
from aniso.published.dataset import open_published

__all__ = ["export_published", "verify_export", "FORMATS"]

logger = logging.getLogger(__name__)

FORMATS = ("clip-retrieval", "webdataset")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


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
            key = i if _SAFE_KEY.match(i) else f"row{row}"
            for ext, payload in (("npy", _npy_bytes(vec)), ("json", json.dumps({"id": i, "row": row}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _read_back_tar(data: bytes) -> tuple[list[str], np.ndarray]:
    ids, vecs = [], []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            payload = tar.extractfile(member).read()
            if member.name.endswith(".npy"):
                vecs.append(np.load(io.BytesIO(payload)))
            else:
                ids.append(json.loads(payload)["id"])
    return ids, np.stack(vecs) if vecs else np.empty((0, 0), np.float16)


def _files_of(fmt: str, out: str, part: int) -> dict[str, str]:
    if fmt == "clip-retrieval":
        return {"embeddings": join_url(out, "img_emb", f"img_emb_{part}.npy"),
                "metadata": join_url(out, "metadata", f"metadata_{part}.parquet")}
    return {"tar": join_url(out, f"{part:06d}.tar")}


def _marker_url(out: str, part: int) -> str:
    return join_url(out, "_export", f"part-{part:06d}.json")


def _done(out: str, part: int, options: dict[str, Any]) -> dict[str, Any] | None:
    """The part's marker when the part is complete (marker present, files of the recorded size)."""
    try:
        with open_url(_marker_url(out, part), "r", options) as f:
            marker = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    for entry in marker["files"].values():
        fs, path = filesystem(join_url(out, entry["path"]), options)
        if not fs.exists(path) or int(fs.info(path)["size"]) != entry["size"]:
            return None
    return marker


def _write_part(fmt: str, out: str, part: int, ids: list[str], rows: np.ndarray, emb: np.ndarray,
                options: dict[str, Any]) -> dict[str, Any]:
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
    marker = {"part": part, "rows": len(ids), "files": files}
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
        got_ids, got = _read_back_tar(blobs["tar"])
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
    ds = open_published(root, dataset, version=version, storage_options=options)
    from aniso.io.store import shard_checksum

    parts = []
    for entry in ds.manifest["shards"]:
        part, start, stop = entry["shard"], entry["start"], entry["stop"]
        marker = _done(out, part, options)
        if marker is None:
            emb, ids, valid = ds.store.read_rows(start, stop)
            if verify_source and shard_checksum(emb, list(ids)) != entry["sha256"]:
                raise StoreCorrupt(f"shard {part} (rows [{start}, {stop})) of {ds.store.url} does not match "
                                   "its published checksum; not exporting damaged data")
            rows = np.arange(start, stop)[valid]
            marker = _write_part(fmt, out, part, [str(i) for i in ids[valid]], rows,
                                 emb[valid].astype(np.float16), options)
            logger.info("exported part %d (%d rows) to %s", part, marker["rows"], out)
        parts.append(marker)
    manifest = {"format": fmt, "dataset": dataset, "version": ds.version, "dim": ds.manifest["dim"],
                "dtype": "float16", "rows": sum(p["rows"] for p in parts),
                "skipped_invalid_rows": ds.manifest["n_rows"] - sum(p["rows"] for p in parts), "parts": parts}
    write_atomic(join_url(out, "export.json"), json.dumps(manifest, indent=2, sort_keys=True).encode(), options)
    return manifest


def verify_export(out: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Re-hash every exported file against ``export.json``; the list of problems (empty: intact)."""
    options = storage_options or {}
    try:
        manifest = json.loads(_read(join_url(out, "export.json"), options))
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
    return problems
