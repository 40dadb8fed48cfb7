"""Statistics stage: per-shard moments on Dask, merged by a tree of merge tasks.

Every shard of every store (text and image) is submitted at once, a few shards per task
(``shard_batches``), so both modalities' shards share the workers; each store's tree
reduction then runs, the trees side by side.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso.io.rows import StoreRef, describe, open_rows
from aniso.stages.statistics import stats_url
from aniso.tasks.statistics import merge_moments, shard_moments

from ._common import StageProgress, shard_batches, task_slots

#: Fan-in of the tree reduction (dask's split_every): moments are small (a d×d co-moment is
#: 2 MiB at d=512), and every merge task costs Prefect bookkeeping.
SPLIT_EVERY = 32


def compute_statistics_together(stores: list[StoreRef], storage_options: dict[str, Any], kind: str = "full") -> list[str]:
    """Moments (``kind``: "full" or "trace") of every valid row of each store; returns, per store,
    the URL of its merged moments."""
    refs = {ref.url: ref for ref in stores}
    store_urls = list(refs)
    slots = task_slots()
    groups = [(url, group, sum(refs[url].shard_sizes(group))) for url in store_urls
              for group in shard_batches(list(range(refs[url].n_shards)), slots)]
    progress = StageProgress("statistics", sum(rows for _, _, rows in groups))
    futures = [shard_moments.submit(url, group, storage_options, kind) for url, group, _ in groups]
    parts: dict[str, list[str]] = {url: [] for url in store_urls}
    for (url, _, rows), future in zip(groups, futures):
        parts[url].extend(future.result())
        progress.advance(rows)
    progress.finish()
    finals = {url: stats_url(url, f"moments-{kind}") for url in store_urls}
    level = 0
    while any(len(p) > 1 or p[0] != finals[url] for url, p in parts.items()):
        pending = {}
        for url, p in parts.items():
            if len(p) == 1 and p[0] == finals[url]:
                continue
            groups = [p[i : i + SPLIT_EVERY] for i in range(0, len(p), SPLIT_EVERY)]
            pending[url] = [
                merge_moments.submit(group, finals[url] if len(groups) == 1 else
                                     stats_url(url, f"merge-{kind}-{level}-{i:06d}"), storage_options)
                for i, group in enumerate(groups)
            ]
        for url, futs in pending.items():
            parts[url] = [f.result() for f in futs]
        level += 1
    return [parts[ref.url][0] for ref in stores]


def compute_statistics(store_url: str, storage_options: dict[str, Any], kind: str = "full") -> str:
    """Moments of every valid row of one store; returns the URL of the merged moments."""
    return compute_statistics_together([describe(open_rows(store_url, storage_options))], storage_options, kind)[0]


@flow(name="statistics")
def statistics(store_url: str, storage_options: dict[str, Any] | None = None, kind: str = "full") -> str:
    """Standalone statistics flow over one embedding store."""
    return compute_statistics(store_url, storage_options or {}, kind)
