"""The embed stage's work around its shards: plan, open the store, and after the shards, the
corpus manifest and the failure-rate check (the shards themselves: :func:`aniso.encode` via
``tasks/embed.py``). Plain functions; ``flows/embed.py`` only fans the shards out.

The store lives at ``<root>/<dataset>/embeddings/<model-key>/<modality>.zarr``, where the model
key names the model, its weights, the precision and the corpus plan (never worker count or
batch size), so a rerun with the same corpus and model resumes the same store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from typing import Any

from aniso._fs import join_url
from aniso.config import Settings, config_hash
from aniso.corpus import ShardSpec, check_failure_rate, plan_digest, plan_shards, read_records, write_manifest
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore

__all__ = ["model_key", "prepare_embedding", "finish_embedding"]

logger = logging.getLogger(__name__)


def model_key(model: str, pretrained: str | None, precision: str, digest: str) -> str:
    """A safe directory name for (model, weights, precision, corpus plan)."""
    weights = str(pretrained or "random")
    if "/" in weights or len(weights) > 40:  # a checkpoint path: its name plus a hash of the path
        weights = f"{weights.rstrip('/').rsplit('/', 1)[-1][:24]}-{hashlib.sha256(weights.encode()).hexdigest()[:8]}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{weights}-{precision}")
    return f"{safe}-{digest[:12]}"


def prepare_embedding(url: str, modality: str, settings: Settings) -> tuple[str, list[ShardSpec], list[ShardSpec]]:
    """Plan the corpus at ``url`` into shards and create (or reopen) its store.

    Returns ``(store_url, every shard, shards still to embed)``. Loads the encoder once here, so
    a wrong device or precision is reported before any task runs.
    """
    from aniso.encode import get_encoder  # torch/open_clip: only when a raw corpus is embedded

    options = settings.storage.fs_options()
    layout = DatasetLayout(settings.storage.root, settings.storage.dataset)
    specs = plan_shards(url, settings.corpus, modality=modality, storage_options=options)  # type: ignore[arg-type]
    logging.getLogger("aniso.notice").info("embed %s: %d item(s) in %d shard(s) planned; loading model %s (%s)",
                                           modality, sum(sp.n_items for sp in specs), len(specs),
                                           settings.embed.model, settings.embed.pretrained)
    encoder = get_encoder(settings.embed)
    digest = plan_digest(specs)
    store_url = layout.embeddings(model_key(settings.embed.model, settings.embed.pretrained, encoder.key.precision, digest), modality)
    per_shard = settings.corpus.items_per_shard
    store = EmbeddingStore.create(
        store_url, n_rows=sum(s.n_items for s in specs), dim=encoder.dim,
        chunk_rows=math.gcd(settings.store.chunk_rows, per_shard), shard_rows=per_shard,
        dtype=settings.store.output_dtype, compressor=settings.store.compressor, storage_options=options,
        attrs={"modality": modality, "corpus": url, "plan_digest": digest, "config_hash": config_hash(settings),
               **{k: v for k, v in encoder.attrs.items() if k != "device"}},
    )
    done = store.completed_shards()
    pending = [s for s in specs if s.index not in done]
    logger.info("embed %s: %d shard(s), %d already complete", modality, len(specs), len(specs) - len(pending))
    return store_url, specs, pending


def finish_embedding(url: str, modality: str, store_url: str, specs: list[ShardSpec], settings: Settings,
                     *, embedded_now: int) -> dict[str, Any]:
    """After every shard: write the corpus manifest and check the failure rate (raises
    :class:`~aniso.errors.FailureRateExceeded` above ``corpus.max_failure_rate``)."""
    import pandas as pd

    options = settings.storage.fs_options()
    records = [read_records(join_url(store_url, "_records", f"{s.index:06d}.parquet"), options) for s in specs]
    frame = pd.concat(records, ignore_index=True)
    manifest = write_manifest(frame, settings.storage.root, settings.storage.dataset, modality, options)
    rate = check_failure_rate(frame, settings.corpus.max_failure_rate, what=f"{modality} corpus {url}")
    return {"store": store_url, "manifest": manifest, "rows": len(frame), "failure_rate": rate,
            "shards": len(specs), "embedded_now": embedded_now}
