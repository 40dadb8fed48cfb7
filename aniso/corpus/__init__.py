"""Corpus ingestion: readers over any fsspec URL, a deterministic shard plan, and the manifest.

Text comes from jsonl / parquet / csv / txt files or the captions of webdataset tars; images from
folder trees (jpg, png, webp) or webdataset tars. Bad items are recorded, never raised::

    specs = plan_shards("s3://bucket/captions/", settings.corpus, modality="text")
    items = read_shard(specs[0])            # ids, sources, payloads, errors
    write_manifest(records, root, dataset, "text")
    check_failure_rate(records, settings.corpus.max_failure_rate)

(Precomputed embeddings in clip-retrieval's layout are read by :mod:`aniso.io.inputs`.)
"""

from __future__ import annotations

from aniso.corpus._formats import FileRange
from aniso.corpus._images import decode_image
from aniso.corpus._plan import ShardSpec, list_corpus, plan_digest, plan_shards
from aniso.corpus._records import (
    MANIFEST_COLUMNS,
    ItemRecord,
    check_failure_rate,
    failure_rate,
    manifest_url,
    read_manifest,
    read_records,
    records_frame,
    write_manifest,
    write_records,
)
from aniso.corpus._shard import ShardItems, read_shard

__all__ = [
    "FileRange",
    "ItemRecord",
    "MANIFEST_COLUMNS",
    "ShardItems",
    "ShardSpec",
    "check_failure_rate",
    "decode_image",
    "failure_rate",
    "list_corpus",
    "manifest_url",
    "plan_digest",
    "plan_shards",
    "read_manifest",
    "read_records",
    "read_shard",
    "records_frame",
    "write_manifest",
    "write_records",
]
