"""The statistics stage: mergeable moments per shard, their tree reduction, and row samples.

Idempotent, one call per shard or per run (see :mod:`aniso.stages`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from aniso._fs import exists, join_url, open_url, write_atomic
from aniso.io.npy_view import NpyView
from aniso.io.rows import open_rows
from aniso.io.store import EmbeddingStore
from aniso.methods.table import method_entry
from aniso.numeric.moments import Moments, merge_all
from aniso.numeric.sampling import rows_in_range

__all__ = ["statistics_kind", "stats_url", "shard_moments", "reduce_moments", "load_moments", "sample_rows"]


def stats_url(store_url: str, name: str) -> str:
    """Where the moments ``name`` of a store live: beside its data, under ``_stats/``."""
    return join_url(store_url, "_stats", f"{name}.npz")


def _save_moments(url: str, moments: Moments, options: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **moments.to_arrays(""))
    # whole or not at all: a stage skips moments that exist, so half a file must never exist
    write_atomic(url, buffer.getvalue(), options)


def load_moments(url: str, options: dict[str, Any]) -> Moments:
    with open_url(url, "rb", options) as f:
        with np.load(io.BytesIO(f.read())) as npz:
            return Moments.from_arrays(dict(npz), "")


def statistics_kind(method: str) -> str:
    """``"full"`` or ``"trace"``: the statistics ``method`` needs (its row of the method table)."""
    return method_entry(method).statistics


def shard_moments(store_url: str, shard: int, storage_options: dict[str, Any], kind: str = "full") -> str:
    """Moments (``kind`` "full" or "trace") of one shard's valid rows, stored beside the data;
    returns their URL. Float32 products with float64 accumulation (see :mod:`aniso.numeric.moments`)."""
    url = stats_url(store_url, f"moments-{kind}-{shard:06d}")
    if exists(url, storage_options):
        return url
    emb, _, valid = open_rows(store_url, storage_options).read_shard(shard, with_ids=False)
    rows = emb if valid.all() else emb[valid]
    _save_moments(url, Moments.from_chunk(rows, full=kind == "full", products="float32"), storage_options)
    return url


def reduce_moments(part_urls: list[str], out_url: str, storage_options: dict[str, Any]) -> str:
    """Merge partial moments (a node of the tree reduction); returns the merged URL."""
    if not exists(out_url, storage_options):
        _save_moments(out_url, merge_all(load_moments(u, storage_options) for u in part_urls), storage_options)
    return out_url


def sample_rows(store: EmbeddingStore | NpyView, indices: np.ndarray) -> np.ndarray:
    """The valid rows of ``store`` at sorted global *valid-row* ``indices``.

    The markers give each shard's valid-row range, so only shards holding sampled rows are read;
    a local in-place input reads just the sampled rows (every row of it is valid).
    """
    if isinstance(store, NpyView):
        rows = store.read_rows_at(indices)
        if rows is not None:
            return rows
    offsets = np.cumsum([0] + [m["valid_rows"] for m in store.markers()])
    parts = []
    for shard in range(store.n_shards):
        local = rows_in_range(indices, int(offsets[shard]), int(offsets[shard + 1]))
        if local.size:
            emb, _, valid = store.read_shard(shard, with_ids=False)
            parts.append(emb[valid][local])
    return np.concatenate(parts) if parts else np.empty((0, store.dim), np.float32)
