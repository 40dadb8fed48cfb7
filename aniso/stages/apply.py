"""The apply stage: every text shard transformed by the fitted model and written whole, with the
per-shard quality figures the gates judge.

Idempotent, one call per shard or per run (see :mod:`aniso.stages`).
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aniso.io.rows import open_rows
from aniso.io.store import EmbeddingStore
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
    """Transform one shard of text and write it whole, with its per-shard quality stats."""
    subs = EmbeddingStore.open(subs_url, storage_options=storage_options, mode="r+")
    if shard in subs.completed_shards():
        return subs.marker(shard)
    started = time.perf_counter()
    emb, ids, valid = open_rows(text_store_url, storage_options).read_shard(shard)
    return apply_rows(model_url, subs, shard, emb, ids, valid, started=started)


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
    aligner = Aligner.load(model_url, subs.storage_options)
    read_s = time.perf_counter() - started
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aniso-digest") as pool:
        # the input's sha256 (a second thread: hashlib releases the GIL) beside the transform
        pending = pool.submit(input_digest, emb, ids, valid) if digest is None else None
        out = np.zeros((emb.shape[0], emb.shape[1]), dtype=np.float32)
        if valid.any():
            every = bool(valid.all())
            rows = emb if every else emb[valid]
            target = out if every else np.empty((rows.shape[0], emb.shape[1]), np.float32)
            for i in range(0, rows.shape[0], APPLY_BLOCK):
                aligner.transform(rows[i : i + APPLY_BLOCK], out=target[i : i + APPLY_BLOCK])
            if not every:
                out[valid] = target
        compute_s = time.perf_counter() - started - read_s
        stats = shard_quality(out if valid.all() else out[valid], list(ids[valid]))
        stats.update(read_seconds=read_s, compute_seconds=compute_s,
                     input_sha256=digest if pending is None else pending.result())
    marker = subs.write_shard(shard, out, list(ids), valid=valid, stats=stats)
    marker["stats"]["write_seconds"] = time.perf_counter() - started - read_s - compute_s
    return marker


def input_digest(emb: np.ndarray, ids: Any, valid: np.ndarray) -> str:
    """sha256 of a text shard as the model sees it: its rows (float32, C order), ids and valid
    flags. Equal digests mean equal substitutes under one model (the transforms are row-wise)."""
    digest = hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1).view(np.uint8))
    digest.update("\x1f".join(map(str, ids)).encode())
    digest.update(np.asarray(valid, dtype=np.uint8).tobytes())
    return digest.hexdigest()


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
