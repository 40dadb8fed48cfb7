"""Structural checks of a published manifest against itself and the Zarr arrays it describes.

Checksums prove the shards the manifest lists are intact; they prove nothing about shards it
leaves out. A manifest whose ``shards`` is empty, cut short, out of order, or whose geometry,
dtype or counts disagree with the arrays would otherwise verify "clean" while describing data it
does not cover. These checks need no data read: :func:`aniso.published.dataset.open_published`
runs them on every open, so no reader (and no ``aniso verify``) trusts such a manifest.
"""

from __future__ import annotations

import re
from typing import Any

from aniso.io.chunk_digest import CHUNK_ARRAYS

__all__ = ["manifest_problems"]

_SHARD_INTS = ("shard", "start", "stop", "rows", "valid_rows")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _geometry(manifest: dict[str, Any]) -> list[str]:
    bad = [f"{k!r} is {manifest.get(k)!r}, not a positive integer"
           for k in ("n_rows", "dim", "chunk_rows", "shard_rows") if not _is_int(manifest.get(k)) or manifest[k] < 1]
    if not bad and manifest["shard_rows"] % manifest["chunk_rows"]:
        bad.append(f"shard_rows {manifest['shard_rows']} is not a multiple of chunk_rows {manifest['chunk_rows']}")
    if not bad and (not _is_int(manifest.get("valid_rows")) or not 0 <= manifest["valid_rows"] <= manifest["n_rows"]):
        bad.append(f"'valid_rows' is {manifest.get('valid_rows')!r}, not an integer in [0, n_rows]")
    return bad


def _against_arrays(manifest: dict[str, Any], store: Any) -> list[str]:
    """The manifest's geometry and dtype against the Zarr arrays actually stored."""
    n, dim = manifest["n_rows"], manifest["dim"]
    arrays = manifest.get("arrays") if isinstance(manifest.get("arrays"), dict) else {}
    emb = arrays.get("embedding") if isinstance(arrays.get("embedding"), dict) else {}
    found = []
    stored = {"shape": list(store.shape), "chunks": [store.chunk_rows, store.dim],
              "shards": [store.shard_rows, store.dim], "dtype": str(store.embedding.dtype)}
    declared = {"shape": [n, dim], "chunks": [manifest["chunk_rows"], dim], "shards": [manifest["shard_rows"], dim]}
    for key, want in stored.items():
        if key in declared and declared[key] != want:
            found.append(f"its geometry says embedding {key} {declared[key]}, the stored array has {want}")
        if emb.get(key) != want:
            found.append(f"arrays.embedding.{key} is {emb.get(key)!r}, the stored array has {want!r}")
    for name in ("id", "valid"):
        entry = arrays.get(name) if isinstance(arrays.get(name), dict) else {}
        have = list(store.group[name].shape) if name in store.group else None
        if entry.get("shape") != [n] or have != [n]:
            found.append(f"arrays.{name}.shape is {entry.get('shape')!r} and the stored array's {have}; n_rows is {n}")
    return found


def _shard_entries(manifest: dict[str, Any]) -> list[str]:
    """The shard list must tile ``[0, n_rows)`` in order with the manifest's shard geometry."""
    n, shard_rows, chunk_rows = manifest["n_rows"], manifest["shard_rows"], manifest["chunk_rows"]
    shards = manifest.get("shards")
    expected = -(-n // shard_rows)
    if not isinstance(shards, list) or len(shards) != expected:
        have = len(shards) if isinstance(shards, list) else type(shards).__name__
        return [f"'shards' lists {have} shard(s); {n} rows in shards of {shard_rows} need {expected}"]
    found = []
    digests = any(isinstance(s, dict) and "chunks" in s for s in shards)
    recipe = manifest.get("chunk_checksum")
    stride = recipe.get("embedding_row_stride") if isinstance(recipe, dict) else None
    if digests and (not _is_int(stride) or stride < 1 or recipe.get("algorithm") != "crc32c"):
        found.append(f"'chunk_checksum' is {recipe!r:.120}, not crc32c with a positive embedding_row_stride")
    for i, entry in enumerate(shards):
        start, stop = i * shard_rows, min((i + 1) * shard_rows, n)
        want = {"shard": i, "start": start, "stop": stop, "rows": stop - start}
        if not isinstance(entry, dict) or any(not _is_int(entry.get(k)) for k in _SHARD_INTS):
            found.append(f"shards[{i}] lacks integer {list(_SHARD_INTS)} (found {entry!r:.120})")
            continue
        wrong = {k: entry[k] for k, v in want.items() if entry[k] != v}
        if wrong:
            found.append(f"shards[{i}] has {wrong}; shard {i} of {n} rows in shards of {shard_rows} is {want}")
        if not 0 <= entry["valid_rows"] <= entry["rows"]:
            found.append(f"shards[{i}] has valid_rows {entry['valid_rows']} outside [0, {entry['rows']}]")
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            found.append(f"shards[{i}] has sha256 {entry.get('sha256')!r}, not a 64-digit hex digest")
        if digests:
            chunks = entry.get("chunks") if isinstance(entry.get("chunks"), dict) else {}
            n_chunks = -(-(stop - start) // chunk_rows)
            for name in CHUNK_ARRAYS:
                listed = chunks.get(name)
                if not isinstance(listed, list) or len(listed) != n_chunks or not all(map(_is_int, listed)):
                    found.append(f"shards[{i}].chunks.{name} is not a list of {n_chunks} integer digest(s)")
    if not found:
        total = sum(entry["valid_rows"] for entry in shards)
        if total != manifest["valid_rows"]:
            found.append(f"'valid_rows' is {manifest['valid_rows']} but its shards' valid_rows sum to {total}")
    return found


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _model_entry(manifest: dict[str, Any]) -> list[str]:
    """The optional ``model`` entry: inside the version (``path`` is ``"model"``), plain file names
    with sha256 digests, and ``id_source`` one of the two known values."""
    found = []
    if manifest.get("id_source", "input") not in ("input", "row-number"):
        found.append(f"'id_source' is {manifest['id_source']!r}, not 'input' or 'row-number'")
    if "model" not in manifest:
        return found
    entry = manifest["model"]
    if not isinstance(entry, dict) or entry.get("path") != "model":
        return found + [f"'model' is {entry!r:.120}, not an entry whose path is 'model'"]
    files = entry.get("files")
    if not isinstance(files, dict) or not files or not all(
            isinstance(k, str) and _FILE_NAME.match(k) and isinstance(v, str) and _HEX64.match(v) for k, v in files.items()):
        found.append(f"'model.files' is {files!r:.120}, not plain file names with sha256 digests")
    if not isinstance(entry.get("sha256"), str) or not _HEX64.match(entry["sha256"]):
        found.append(f"'model.sha256' is {entry.get('sha256')!r}, not a 64-digit hex digest")
    return found


def manifest_problems(manifest: dict[str, Any], store: Any) -> list[str]:
    """Every way ``manifest`` disagrees with itself or with ``store`` (an :class:`EmbeddingStore`)."""
    found = _geometry(manifest)
    if found:
        return found
    return _against_arrays(manifest, store) + _shard_entries(manifest) + _model_entry(manifest)
