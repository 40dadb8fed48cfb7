"""Atomic, self-contained publication of a run as a new version (readers: :mod:`aniso.published.dataset`).

A published version holds everything it needs (``docs/format.md``)::

    published/<version>/data.zarr/      the Zarr v3 group (embedding, id, valid), crc32c per chunk
    published/<version>/model/          the fitted model that made it (aniso.published.model)
    published/<version>/manifest.json   shapes, ids, per-shard sha256 and per-chunk crc32c, model, gates, lineage
    published/LATEST                    {"version", "manifest", "run_key"}

Write order: the run's store is linked (local: hard links, or a copy across devices) or copied
server-side (object storage) into ``published/<version>/data.zarr`` → the version's
``manifest.json`` → ``published/LATEST``. The last two are single objects written in one put (or,
locally, a temp file renamed into place), so a reader that follows ``LATEST`` never sees a partial
dataset, and a failed or concurrent run never leaves ``LATEST`` pointing at one. Nothing under
``runs/`` is needed once a version is published.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from typing import Any

from aniso._fs import filesystem, is_local, join_url, write_atomic
from aniso.errors import StoreCorrupt
from aniso.io.chunk_digest import EMBEDDING_ROW_STRIDE, chunk_digests
from aniso.io.layout import DatasetLayout, version_name
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import DATA_PATH, MANIFEST_FORMAT, REPORT_PATH, find_published, read_json

__all__ = ["publish"]

logger = logging.getLogger(__name__)


def _version_files(fs: Any, path: str) -> dict[str, int]:
    """Every file under ``path`` (hidden temp files left out) with its size, in one listing."""
    found = fs.find(path, detail=True)
    return {p: int(i.get("size") or 0) for p, i in found.items() if not p.rsplit("/", 1)[-1].startswith(".")}


def _materialise(src_url: str, dst_url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Put a self-contained copy of the Zarr group at ``src_url`` under ``dst_url``.

    Local: hard links (a copy across devices); zarr replaces files atomically on write, so later
    writes to the run's store never reach the published files. Object storage: a server-side
    copy of each object (no bytes pass through this process). Returns what was done and its cost.
    """
    t0 = time.perf_counter()
    fs, src = filesystem(src_url, storage_options)
    _, dst = filesystem(dst_url, storage_options)
    if fs.exists(dst):  # a previous attempt died half-way: nothing points at it yet
        fs.rm(dst, recursive=True)
    files = _version_files(fs, src)
    size = sum(files.values())
    metadata = join_url(src, "embedding", "zarr.json")
    if is_local(fs):
        method = "hardlink"
        for name in files:
            target = os.path.join(dst, os.path.relpath(name, src))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if name == metadata:
                continue
            try:
                os.link(name, target)
            except OSError:
                method = "copy"
                shutil.copy2(name, target)
    else:
        method = "server-side copy"
        rest = [f for f in files if f != metadata]
        fs.copy(rest, [join_url(dst, f[len(src):].lstrip("/")) for f in rest])
    # the published embedding's metadata is a new file (never a link: the run's must not change)
    write_atomic(join_url(dst_url, "embedding", "zarr.json"), _nan_fill(fs.cat_file(metadata)), storage_options)
    seconds = time.perf_counter() - t0
    logger.info("published data: %s of %d file(s), %d bytes, in %.2f s", method, len(files), size, seconds)
    return {"method": method, "files": len(files), "bytes": size, "seconds": round(seconds, 4)}


def _nan_fill(metadata: bytes) -> str:
    """The embedding array's ``zarr.json`` with fill value NaN: a plain-zarr reader then gets a
    missing chunk as NaN rows, never as zeros that pass for (invalid) data."""
    meta = json.loads(metadata)
    meta["fill_value"] = "NaN"
    return json.dumps(meta, indent=2)


def _shard_entries(store: EmbeddingStore, markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's shard list: geometry, counts, sha256 and per-chunk digests of each shard.

    Markers written before per-chunk digests existed (or with another embedding row stride) lack
    usable ``chunks``: those shards are read once here to compute them (a resumed old run
    publishes the same manifest as a fresh one).
    """
    entries = []
    for m in markers:
        entry = {k: m[k] for k in ("shard", "start", "stop", "rows", "valid_rows", "sha256")}
        if (m.get("stats") or {}).get("input_sha256"):  # lets a frozen-model run carry the shard over
            entry["input_sha256"] = m["stats"]["input_sha256"]
        chunks = m.get("chunks")
        if chunks is None or m.get("chunks_row_stride") != EMBEDDING_ROW_STRIDE:
            emb, ids, valid = store.read_shard(m["shard"])
            chunks = chunk_digests(emb, list(ids), valid, store.chunk_rows)
        entries.append({**entry, "chunks": chunks})
    return entries


def publish(
    layout: DatasetLayout,
    run_key: str,
    *,
    gate_results: dict[str, Any],
    lineage: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
    report_from: str | None = None,
    model_from: str | None = None,
    model_fitted_in: str | None = None,
    model_fitted_on: dict[str, Any] | None = None,
    id_source: str | None = None,
) -> dict[str, Any]:
    """Publish the run's substitutes as a new immutable, self-contained version; move ``LATEST``.

    Parameters
    ----------
    report_from
        The run's quality folder (holding ``report.json``): its report is rendered again for the
        version and written as ``report.html`` into the version folder before the manifest (which
        then names it), so nothing in a version changes once its manifest exists. A report that
        cannot be written is logged and left out; it never stops a publication.
    model_from
        The run's model folder: copied into ``<version>/model/`` (hard links locally, server-side
        copies on object storage) and named in the manifest's ``model`` entry with its checksums,
        method and parameters, ``model_fitted_in`` (the version that fitted it; this version
        when None) and ``model_fitted_on`` (input fingerprints and row counts).
    id_source
        ``"input"`` (ids from the input) or ``"row-number"``: recorded as the manifest's
        ``id_source`` (the guard rails compare it between versions).

    Returns
    -------
    dict
        The ``LATEST`` pointer, plus ``report`` (the report's URL) when the version has one.
        Rerunning for an already-published run key re-points ``LATEST`` at the existing version
        instead of writing a second copy.
    """
    options = storage_options or {}
    version = find_published(layout, run_key, options)
    report = None
    if version is None:
        version = version_name(run_key, datetime.now(timezone.utc))
        store = EmbeddingStore.open(layout.substitutes(run_key), storage_options=options)
        if not store.is_complete():
            raise StoreCorrupt(f"refusing to publish {store.url}: not every shard is complete")
        markers = store.markers()
        copy = _materialise(store.url, join_url(layout.published(version), DATA_PATH), options)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "dataset": layout.dataset,
            "run_key": run_key,
            "created": datetime.now(timezone.utc).isoformat(),
            "path": DATA_PATH,
            "zarr_format": 3,
            "arrays": {
                "embedding": {"shape": list(store.shape), "dtype": str(store.embedding.dtype),
                              "chunks": list(store.embedding.chunks), "shards": [store.shard_rows, store.dim]},
                "id": {"shape": [store.n_rows], "dtype": "string"},
                "valid": {"shape": [store.n_rows], "dtype": "bool"},
            },
            "n_rows": store.n_rows,
            "valid_rows": sum(m["valid_rows"] for m in markers),
            "dim": store.dim,
            "chunk_rows": store.chunk_rows,
            "shard_rows": store.shard_rows,
            "checksum": {"algorithm": "sha256", "over": "embedding bytes (C order, little-endian) of the "
                         "shard's rows, then its ids joined by U+001F, UTF-8"},
            "chunk_checksum": {"algorithm": "crc32c", "embedding_row_stride": EMBEDDING_ROW_STRIDE,
                               "over": "per chunk of each array: the bytes (C order, little-endian) of every "
                               "embedding_row_stride-th embedding row from the chunk's first; all ids joined "
                               "by U+001F, UTF-8; all valid flags, one byte per row"},
            "shards": _shard_entries(store, markers),
            "gates": gate_results,
            "lineage": lineage,
            "publication": copy,
        }
        if model_from is not None:
            from aniso.published.model import MODEL_PATH, copy_model, model_entry

            model_url = join_url(layout.published(version), MODEL_PATH)
            files = copy_model(model_from, model_url, options)
            manifest["model"] = model_entry(files, model_url, options, fitted_in=model_fitted_in or version,
                                            fitted_on=model_fitted_on or {})
        if id_source is not None:
            manifest["id_source"] = id_source
        if report_from is not None and _write_report(report_from, layout, version, options):
            manifest["report"] = report = REPORT_PATH
        write_atomic(join_url(layout.published(version), "manifest.json"),
                      json.dumps(manifest, indent=2, sort_keys=True, default=str), options)
    pointer = {"version": version, "manifest": f"published/{version}/manifest.json", "run_key": run_key}
    write_atomic(layout.latest, json.dumps(pointer, sort_keys=True), options)
    logger.info("published %s as version %s", layout.base, version)
    if report is None:  # an earlier publication of this run: its manifest says whether it has one
        manifest_url = join_url(layout.published(version), "manifest.json")
        report = read_json(manifest_url, options, "the manifest").get("report")
    return {**pointer, "report": join_url(layout.published(version), REPORT_PATH)} if report else pointer


def _write_report(quality_url: str, layout: DatasetLayout, version: str, options: dict[str, Any]) -> bool:
    from aniso.quality.report import publish_report

    try:
        publish_report(quality_url, layout.published(version), version, layout.dataset, options)
    except Exception as exc:  # noqa: BLE001 - the data is what is published; its report is an extra
        logger.warning("version %s published without its report (%s): %s", version, quality_url, exc)
        return False
    return True
