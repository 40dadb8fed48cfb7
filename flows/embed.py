"""Embed stage: a raw corpus (text or images) → an open_clip embedding store, shards on Dask.

Shards whose completion marker exists are skipped, so a rerun resumes. Planning, the store and
the corpus manifest are :mod:`aniso.stages.embed`; each shard is one task (``tasks/embed.py``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from aniso._fs import absolute_url
from aniso.config import Settings
from aniso.stages.embed import finish_embedding, prepare_embedding
from aniso.tasks.embed import embed_corpus_shard

from ._common import map_shards, wait_for_workers
from ._supervise import note_flow_run


def embed_corpus(url: str, modality: str, settings: Settings) -> dict[str, Any]:
    """Embed the corpus at ``url`` (resuming), write its manifest, check its failure rate."""
    store_url, specs, pending = prepare_embedding(url, modality, settings)
    results = map_shards(embed_corpus_shard, f"embed {modality}", pending, rows=[s.n_items for s in pending],
                         store_url=store_url, settings=settings)
    return finish_embedding(url, modality, store_url, specs, settings, embedded_now=len(results))


@flow(name="embed")
def embed(url: str, modality: str, settings: Settings) -> dict[str, Any]:
    """Standalone embed flow (``aniso embed``)."""
    note_flow_run()  # for a supervised CLI run: its id, to report it cancelled if the run is killed
    settings.storage.root = absolute_url(settings.storage.root)  # tasks may run in other directories
    wait_for_workers(settings.cluster)
    return embed_corpus(absolute_url(url), modality, settings)
