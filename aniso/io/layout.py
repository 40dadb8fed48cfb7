"""Where everything lives under a storage root (docs/storage.md) and how runs are keyed.

::

    <root>/<dataset>/
      corpus/<modality>/manifest.parquet
      embeddings/<input-key>/<modality>.zarr
      runs/<run-key>/model/ | substitutes.zarr | quality/
      published/<version>/manifest.json
      published/LATEST
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aniso._fs import join_url, redact_url
from aniso.errors import ConfigError

__all__ = ["DatasetLayout", "run_key", "check_name", "input_record", "run_lineage"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """Reject names that could escape the dataset root (``..``, slashes, empty, odd chars)."""
    if not _SAFE_NAME.match(value or "") or ".." in value:
        raise ConfigError(
            f"{what} {value!r} is not a safe name: use letters, digits, '.', '_' or '-' "
            "(no slashes, no '..')"
        )
    return value


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset under a storage root."""

    root: str
    dataset: str

    def __post_init__(self) -> None:
        check_name(self.dataset, "dataset name")

    @property
    def base(self) -> str:
        return join_url(self.root, self.dataset)

    def corpus_manifest(self, modality: str) -> str:
        return join_url(self.base, "corpus", check_name(modality, "modality"), "manifest.parquet")

    def embeddings(self, input_key: str, modality: str) -> str:
        return join_url(self.base, "embeddings", check_name(input_key, "input key"), f"{check_name(modality, 'modality')}.zarr")

    def input_store(self, fingerprint: str, modality: str) -> str:
        """Where a precomputed input is copied into Zarr (keyed by its content fingerprint)."""
        return self.embeddings(f"input-{fingerprint[:16]}", modality)

    def input_view(self, fingerprint: str, modality: str) -> str:
        """Where the descriptor of a precomputed input read in place lives."""
        return join_url(self.base, "embeddings", f"input-{check_name(fingerprint[:16], 'fingerprint')}",
                        f"{check_name(modality, 'modality')}.npy-view")

    def run(self, key: str) -> str:
        return join_url(self.base, "runs", check_name(key, "run key"))

    def model(self, key: str) -> str:
        return join_url(self.run(key), "model")

    def substitutes(self, key: str) -> str:
        return join_url(self.run(key), "substitutes.zarr")

    def quality(self, key: str) -> str:
        return join_url(self.run(key), "quality")

    def run_record(self, key: str) -> str:
        """The run's ``run.json`` (its key, dataset, semantic settings and lineage)."""
        return join_url(self.run(key), "run.json")

    def published(self, version: str) -> str:
        return join_url(self.base, "published", check_name(version, "version"))

    @property
    def latest(self) -> str:
        return join_url(self.base, "published", "LATEST")


#: The time part of a version's name: ``<UTC publication time>-<first 12 characters of the run key>``.
VERSION_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"


def version_name(run_key: str, published: datetime) -> str:
    """The name of the version publishing run ``run_key`` at ``published`` (UTC): names sort by time."""
    return f"{published.astimezone(timezone.utc).strftime(VERSION_TIME_FORMAT)}-{run_key[:12]}"


def published_at(version: str) -> float | None:
    """The publication time (epoch s) in a version's name (:func:`version_name`), or None."""
    try:
        return datetime.strptime(version.split("-", 1)[0], VERSION_TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def run_key(inputs: dict[str, str], semantic_config: dict[str, Any], code_version: str, length: int = 20) -> str:
    """Hash of what determines a run's result: input fingerprints, semantic config, code version.

    Execution details (workers, batch sizes, storage options) are not part of it, so changing
    them resumes the same run instead of starting a new one.
    """
    payload = json.dumps(
        {"inputs": inputs, "config": semantic_config, "code": code_version},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def input_record(url: str, fingerprint: str, *, embedded: bool) -> dict[str, Any]:
    """One input's lineage: its URL (credentials redacted; a local path made absolute), its
    content fingerprint, and whether aniso embedded it (a raw corpus) or read it as embeddings."""
    shown = url if "://" in url else os.path.abspath(url)
    return {"url": redact_url(shown), "fingerprint": fingerprint, "embedded": embedded}


def run_lineage(inputs: dict[str, dict[str, Any]], *, embed_model: str, **fields: Any) -> dict[str, Any]:
    """A run's lineage (``run.json`` and the manifest's ``lineage``): ``fields`` (method, params,
    config hash, code version, ...), ``inputs`` (:func:`input_record` per modality), and
    ``embed_model`` only when aniso embedded an input with it (never for precomputed embeddings)."""
    lineage = {**fields, "inputs": inputs}
    if any(record.get("embedded") for record in inputs.values()):
        lineage["embed_model"] = embed_model
    return lineage
