"""Incremental frozen-model runs: shards whose input is unchanged are carried over, not recomputed.

Under one model a substitute depends only on its text row (the transforms are row-wise and
row-deterministic), so a shard of the new text input whose rows, ids and valid flags equal those
of the same shard of an earlier version made with that model has that version's substitutes,
bit for bit. Such a shard is carried over: its shard files are hard-linked (locally) or copied
server-side (object storage) from the earlier version into the run's store. A hard-linked shard
takes its per-shard figures from the earlier run's marker of the same bytes; a copy (or a shard
whose earlier run is gone) is read back once for them and checked against the earlier manifest's
sha256. Every other shard is applied. The match is per whole shard at the same position (the
shard is the file unit), so an appended corpus carries every full shard before the new rows; a
reordered or edited input is recomputed where its shards changed (still bit-identical per row:
recomputing is exact).

Which shards match is decided from the ``input_sha256`` of each shard in the earlier manifest
(written by :func:`aniso.stages.apply.apply_shard`) against the same digest of the new shard,
which costs one read of the new text (no transform, no write).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

from aniso._fs import filesystem, is_local, join_url, link_or_copy, open_url
from aniso.io.rows import open_rows
from aniso.io.store import EmbeddingStore, ids_digest, marker_url, shard_checksum
from aniso.stages.apply import apply_rows, apply_shard, input_digest, shard_quality

__all__ = ["carry_entries", "carry_or_apply_shard"]

logger = logging.getLogger(__name__)

_ARRAYS = ("embedding", "id", "valid")
#: What a carried shard's marker takes from the earlier marker of the same bytes.
_MARKER_FIGURES = ("valid_rows", "sha256", "ids_sha256", "chunks", "chunks_row_stride")


def _layout_of(zarr_json: bytes) -> dict[str, Any]:
    """What decides an array's shard file bytes: shape of chunks, dtype, codecs (not fill value)."""
    meta = json.loads(zarr_json)
    return {k: meta.get(k) for k in ("data_type", "chunk_grid", "chunk_key_encoding", "codecs")}


def carry_entries(prev_data_url: str, prev_manifest: dict[str, Any], subs_url: str,
                  storage_options: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The earlier version's shard entries that a shard of the new store could take over.

    Empty unless both stores lay out every array the same way (chunk and shard shape, dtype,
    codecs): only then are shard files interchangeable. Entries without ``input_sha256``
    (versions published before it) are left out.
    """
    fs, prev = filesystem(prev_data_url, storage_options)
    _, subs = filesystem(subs_url, storage_options)
    try:
        for name in _ARRAYS:
            if _layout_of(fs.cat_file(join_url(prev, name, "zarr.json"))) != \
                    _layout_of(fs.cat_file(join_url(subs, name, "zarr.json"))):
                logger.info("no shard carried over from %s: array %r is laid out differently", prev_data_url, name)
                return {}
    except (FileNotFoundError, ValueError) as exc:
        logger.info("no shard carried over from %s: %s", prev_data_url, exc)
        return {}
    store = EmbeddingStore.open(subs_url, storage_options=storage_options)
    entries = {}
    for entry in prev_manifest.get("shards", []):
        shard = entry.get("shard")
        if isinstance(shard, int) and shard < store.n_shards and entry.get("input_sha256") \
                and (entry.get("start"), entry.get("stop")) == store.shard_range(shard):
            entries[shard] = entry
    return entries


def _shard_files(root: str, shard: int) -> list[str]:
    """The shard's files, relative to the group (default chunk key encoding, one shard per row block)."""
    return [join_url("embedding", "c", str(shard), "0"), join_url("id", "c", str(shard)), join_url("valid", "c", str(shard))]


def _copy_shard(prev_data_url: str, subs_url: str, shard: int, storage_options: dict[str, Any]) -> bool:
    """Place the earlier version's files of ``shard`` in the run's store; True when every one is
    a hard link of the earlier file (the same bytes, not a copy of them)."""
    fs, prev = filesystem(prev_data_url, storage_options)
    _, subs = filesystem(subs_url, storage_options)
    linked = is_local(fs)
    for rel in _shard_files(prev, shard):
        source, target = join_url(prev, rel), join_url(subs, rel)
        if not fs.exists(source):  # a shard of fill values is not stored: nothing to carry
            continue
        link_or_copy(fs, source, target)
        linked = linked and os.path.samefile(source, target)
    return linked


def _earlier_marker(prev_subs_url: str | None, shard: int, entry: dict[str, Any], ids: Any, valid: np.ndarray,
                    storage_options: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier run's completion marker of ``shard`` when it still exists and describes exactly
    the bytes the earlier manifest names (sha256 and chunk digests), with the new input's ids and
    valid flags; else None (e.g. the run was removed by ``aniso gc``)."""
    if prev_subs_url is None:
        return None
    try:
        with open_url(marker_url(prev_subs_url, shard), "r", storage_options) as f:
            marker = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    same = (isinstance(marker, dict) and all(k in marker for k in _MARKER_FIGURES)
            and marker.get("sha256") == entry.get("sha256")
            and marker.get("chunks") == entry.get("chunks") and isinstance(marker.get("stats"), dict)
            and marker.get("valid_rows") == int(np.count_nonzero(valid)) and marker.get("ids_sha256") == ids_digest(ids))
    return marker if same else None


def carry_or_apply_shard(model_url: str, text_store_url: str, subs_url: str, shard: int,
                         storage_options: dict[str, Any], prev_data_url: str | None = None,
                         prev_entry: dict[str, Any] | None = None, prev_subs_url: str | None = None) -> dict[str, Any]:
    """Carry shard ``shard`` over from the earlier version when its input is unchanged, else apply.

    ``prev_subs_url``: the earlier version's run store, whose completion markers hold each shard's
    quality figures: a shard carried as hard links takes its marker from there instead of reading
    the shard back (the files are the earlier version's, not copies; zarr's per-chunk crc32c still
    checks every later read). A copy (object storage, another device), or a shard whose earlier
    marker is gone or differs, is read back and checked against the manifest's sha256.

    Returns the shard's completion marker; ``stats["carried"]`` says which it was.
    """
    subs = EmbeddingStore.open(subs_url, storage_options=storage_options, mode="r+")
    if shard in subs.completed_shards():
        return subs.marker(shard)
    if prev_data_url is None or prev_entry is None:
        return apply_shard(model_url, text_store_url, subs_url, shard, storage_options)
    started = time.perf_counter()
    emb, ids, valid = open_rows(text_store_url, storage_options).read_shard(shard)
    digest = input_digest(emb, ids, valid)
    if digest != prev_entry["input_sha256"]:  # the rows are read and hashed already: not again
        return apply_rows(model_url, subs, shard, emb, ids, valid, started=started, digest=digest)
    linked = _copy_shard(prev_data_url, subs_url, shard, storage_options)
    earlier = _earlier_marker(prev_subs_url, shard, prev_entry, ids, valid, storage_options) if linked else None
    if earlier is not None:
        stats = {**earlier["stats"], "input_sha256": digest, "carried": True, "read_seconds": 0.0,
                 "compute_seconds": 0.0, "write_seconds": time.perf_counter() - started}
        return subs.write_marker(shard, {**{k: earlier[k] for k in _MARKER_FIGURES}, "stats": stats})
    out, out_ids, out_valid = subs.read_shard(shard)
    checksum = shard_checksum(out, list(out_ids))
    if checksum != prev_entry["sha256"]:  # never trust a copy unchecked
        logger.warning("shard %d carried from %s does not match its checksum: applied instead", shard, prev_data_url)
        return apply_rows(model_url, subs, shard, emb, ids, valid, started=started, digest=digest)
    stats = shard_quality(out if out_valid.all() else out[out_valid], list(out_ids[out_valid]))
    stats.update(input_sha256=digest, carried=True, read_seconds=0.0, compute_seconds=0.0,
                 write_seconds=time.perf_counter() - started)
    return subs.mark_shard(shard, out, list(out_ids), valid=out_valid, stats=stats, checksum=checksum)
