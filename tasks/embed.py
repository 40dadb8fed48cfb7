"""Embed tasks: one open_clip shard (read → decode → encode) written as one whole store shard."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso._fs import join_url
from aniso.config import Settings
from aniso.corpus import ShardSpec, write_records
from aniso.encode import embed_shard
from aniso.io.store import EmbeddingStore

from ._retry import TASK_OPTIONS


@task(name="embed-shard", **TASK_OPTIONS)
def embed_corpus_shard(shard: ShardSpec, store_url: str, settings: Settings) -> dict[str, Any]:
    """Embed ``shard``, write its item records, then its rows and completion marker (in that order)."""
    options = settings.storage.fs_options()
    result = embed_shard(shard, settings)
    write_records(result.records, join_url(store_url, "_records", f"{shard.index:06d}.parquet"), options)
    store = EmbeddingStore.open(store_url, storage_options=options, mode="r+")
    stats = {k: round(v, 4) for k, v in result.timings.items()}
    marker = store.write_shard(shard.index, result.embeddings, result.ids, valid=result.valid, stats=stats)
    return {"shard": shard.index, "shard_id": shard.shard_id, "rows": marker["rows"],
            "valid_rows": marker["valid_rows"], **stats}
