"""Statistics stage: per-shard moments on Dask, merged by a tree of merge tasks."""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso._fs import join_url
from aniso.inplace import open_rows
from aniso.tasks.stats import merge_moments, shard_moments

from ._common import map_shards

#: Fan-in of the tree reduction (dask's split_every).
SPLIT_EVERY = 8


def compute_statistics(store_url: str, storage_options: dict[str, Any]) -> str:
    """Moments of every valid row of a store; returns the URL of the merged moments."""
    final = join_url(store_url, "_stats", "moments.npz")
    n_shards = open_rows(store_url, storage_options).n_shards
    parts = map_shards(shard_moments, f"statistics {store_url.rsplit('/', 1)[-1]}", range(n_shards),
                       store_url=store_url, storage_options=storage_options)
    level = 0
    while len(parts) > 1:
        groups = [parts[i : i + SPLIT_EVERY] for i in range(0, len(parts), SPLIT_EVERY)]
        futures = [
            merge_moments.submit(group, join_url(store_url, "_stats", f"merge-{level}-{i:06d}.npz") if len(groups) > 1 else final,
                                 storage_options)
            for i, group in enumerate(groups)
        ]
        parts = [f.result() for f in futures]
        level += 1
    if parts[0] != final:  # a single shard: its moments are the total
        parts = [merge_moments.submit(parts, final, storage_options).result()]
    return parts[0]


@flow(name="statistics")
def statistics(store_url: str, storage_options: dict[str, Any] | None = None) -> str:
    """Standalone statistics flow over one embedding store."""
    return compute_statistics(store_url, storage_options or {})
