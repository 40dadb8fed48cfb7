"""The apply stage: every text shard transformed by the fitted model and written whole, with the
per-shard quality figures the gates judge.

Idempotent, one call per shard or per run (see :mod:`aniso.stages`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aniso.errors import ShardAlignmentError
from aniso.io.rows import open_rows, read_blocks
from aniso.io.store import EmbeddingStore, finish_checksum, ids_bytes
from aniso.methods import Aligner

__all__ = ["APPLY_BLOCK", "prepare_substitutes", "apply_shard", "apply_rows", "shard_quality", "input_digest"]

#: Rows per transform call: a method's temporaries are per block instead of several copies of the
#: whole shard (the maps are row-wise, so the result does not depend on it).
APPLY_BLOCK = 8192


def prepare_substitutes(
    subs_url: str, text_store_url: str, *, attrs: dict[str, Any], dtype: str, compressor: str,
    storage_options: dict[str, Any],
) -> list[int]:
    """Create the substitutes store with the text store's geometry; returns pending shards."""
    text = open_rows(text_store_url, storage_options)
    subs = EmbeddingStore.create(
        subs_url, n_rows=text.n_rows, dim=text.dim, chunk_rows=text.chunk_rows, shard_rows=text.shard_rows,
        dtype=dtype, compressor=compressor, attrs=attrs, storage_options=storage_options,
    )
    return sorted(set(range(subs.n_shards)) - subs.completed_shards())


def apply_shard(
    model_url: str, text_store_url: str, subs_url: str, shard: int, storage_options: dict[str, Any]
) -> dict[str, Any]:
    """Transform one shard of text and write it whole, with its per-shard quality stats.

    The shard is read in blocks, the next block on a second thread while this one is transformed
    (:func:`aniso.io.rows.read_blocks`), so the read and the transform overlap.
    """
    subs = EmbeddingStore.open(subs_url, storage_options=storage_options, mode="r+")
    if shard in subs.completed_shards():
        return subs.marker(shard)
    started = time.perf_counter()
    text = open_rows(text_store_url, storage_options)
    blocks = read_blocks(text, *text.shard_range(shard), APPLY_BLOCK)
    try:
        return _apply_blocks(model_url, subs, shard, blocks, started=started)
    finally:
        blocks.close()  # a failed block ends the reader too


def apply_rows(model_url: str, subs: EmbeddingStore, shard: int, emb: np.ndarray, ids: Any, valid: np.ndarray,
               *, started: float, digest: str | None = None) -> dict[str, Any]:
    """Transform the text rows of shard ``shard`` (already read) and write them whole to ``subs``.

    Parameters
    ----------
    started
        ``time.perf_counter()`` when the shard's read began (the marker's ``read_seconds``).
    digest
        The rows' :func:`input_digest` when the caller has computed it (a frozen-model run
        deciding whether to carry the shard over), else computed here.
    """
    ids = np.asarray(ids, dtype=object)
    valid = np.asarray(valid, dtype=bool)
    blocks = ((emb[lo : lo + APPLY_BLOCK], ids[lo : lo + APPLY_BLOCK], valid[lo : lo + APPLY_BLOCK])
              for lo in range(0, emb.shape[0], APPLY_BLOCK))
    return _apply_blocks(model_url, subs, shard, blocks, started=started, digest=digest)


def _apply_blocks(model_url: str, subs: EmbeddingStore, shard: int,
                  blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], *, started: float,
                  digest: str | None = None) -> dict[str, Any]:
    """Transform the shard's rows block by block into one output buffer, then write it whole.

    The input digest and the output checksum are hashed block by block on a second thread
    (hashlib releases the GIL) while the next block is transformed: the same sha256 values as
    :func:`input_digest` and :func:`aniso.io.store.shard_checksum` of the whole shard.
    """
    aligner = Aligner.load(model_url, subs.storage_options)
    start, stop = subs.shard_range(shard)
    out = np.empty((stop - start, subs.dim), dtype=np.float32)
    input_hash = hashlib.sha256() if digest is None else None
    # the checksum is of the rows as stored: hashed here only when they are stored as computed
    output_hash = hashlib.sha256() if subs.embedding.dtype == out.dtype else None
    id_parts: list[np.ndarray] = []
    valid_parts: list[np.ndarray] = []
    read_s = compute_s = 0.0
    waited = started
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aniso-digest") as hasher:
        hashing = []  # one worker: the updates run in the order they are submitted
        lo = 0
        for emb, ids, valid in blocks:
            began = time.perf_counter()
            read_s += began - waited
            hi = lo + emb.shape[0]
            if hi > out.shape[0] or len(ids) != emb.shape[0] or len(valid) != emb.shape[0]:
                raise ShardAlignmentError(f"the rows read for shard {shard} of {subs.url} do not fit its "
                                          f"{out.shape[0]} rows (block [{lo}, {hi}), {len(ids)} ids)")
            if input_hash is not None:
                hashing.append(hasher.submit(input_hash.update, _row_bytes(emb)))
            target = out[lo:hi]
            if valid.all():
                aligner.transform(emb, out=target)
            else:  # rows flagged invalid hold zeros
                target[...] = 0
                if valid.any():
                    target[valid] = aligner.transform(emb[valid])
            if output_hash is not None:
                hashing.append(hasher.submit(output_hash.update, _row_bytes(target)))
            id_parts.append(ids)
            valid_parts.append(np.asarray(valid, dtype=bool))
            lo = hi
            waited = time.perf_counter()
            compute_s += waited - began
        if lo != out.shape[0]:
            raise ShardAlignmentError(f"{lo} rows read for shard {shard} of {subs.url}, which holds {out.shape[0]}")
        for update in hashing:
            update.result()
    ids = np.concatenate(id_parts) if id_parts else np.empty(0, object)
    valid = np.concatenate(valid_parts) if valid_parts else np.empty(0, bool)
    joined_ids = ids_bytes(ids)
    if input_hash is not None:
        digest = _finish_input_digest(input_hash, joined_ids, valid)
    checksum = None if output_hash is None else finish_checksum(output_hash, joined_ids)
    every = bool(valid.all())
    stats = shard_quality(out if every else out[valid], list(ids if every else ids[valid]))
    stats.update(read_seconds=read_s, compute_seconds=compute_s, input_sha256=digest)
    written = time.perf_counter()
    marker = subs.write_shard(shard, out, list(ids), valid=valid, stats=stats, checksum=checksum)
    marker["stats"]["write_seconds"] = time.perf_counter() - written
    return marker


def _row_bytes(rows: np.ndarray) -> np.ndarray:
    """The bytes of float32 rows in C order, as one flat uint8 view (a copy only when not already so)."""
    return np.ascontiguousarray(rows, dtype=np.float32).reshape(-1).view(np.uint8)


def input_digest(emb: np.ndarray, ids: Any, valid: np.ndarray) -> str:
    """sha256 of a text shard as the model sees it: its rows (float32, C order), ids and valid
    flags. Equal digests mean equal substitutes under one model (the transforms are row-wise)."""
    return _finish_input_digest(hashlib.sha256(_row_bytes(emb)), ids_bytes(ids), valid)


def _finish_input_digest(rows_hash: Any, joined_ids: bytes, valid: np.ndarray) -> str:
    """:func:`input_digest` from a sha256 that has taken the shard's rows (:func:`_row_bytes`, in
    order): then the ids, then one byte per valid flag."""
    rows_hash.update(joined_ids)
    rows_hash.update(np.asarray(valid, dtype=np.uint8).tobytes())
    return rows_hash.hexdigest()


def shard_quality(subs: np.ndarray, ids: list[str]) -> dict[str, Any]:
    """Per-shard summary the gates validate (cheap; computed while the shard is in memory).

    Works on the float32 rows in place (float64 sums, no float64 copy of the shard).
    """
    squares = np.einsum("ij,ij->i", subs, subs)  # NaN/Inf rows have a non-finite norm (unit rows never overflow)
    finite = np.isfinite(squares)
    if not finite.all():
        finite = np.isfinite(subs).all(axis=1)
    good = subs if finite.all() else subs[finite]
    norms = np.sqrt(squares[finite].astype(np.float64))
    return {
        "rows": int(subs.shape[0]),
        "nonfinite_rows": int((~finite).sum()),
        "norm_min": float(norms.min()) if norms.size else 1.0,
        "norm_max": float(norms.max()) if norms.size else 1.0,
        "norm_mean": float(norms.mean()) if norms.size else 1.0,
        "sum": good.sum(axis=0, dtype=np.float64).tolist(),
        "ids_unique": len(set(ids)) == len(ids),
    }
