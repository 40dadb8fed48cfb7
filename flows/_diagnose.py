"""``aniso diagnose``: the geometric diagnostics of raw text (and substitutes) against images.

Substitutes are read from an embedding input (``.npy``, clip-retrieval folder, Zarr store: the
run's ``runs/<key>/substitutes.zarr``) or from a published version: ``--substitutes ROOT
--dataset D [--version V]``, or a version folder ``<root>/<dataset>/published/<version>``.
Published rows are read through the checked reader (every chunk compared with its manifest
digest), so what is diagnosed is what training teams read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aniso._fs import exists, join_url
from aniso.errors import InputError, StoreNotFound

__all__ = ["diagnose_inputs", "published_substitutes"]


def published_substitutes(url: str, dataset: str | None, version: str | None,
                          options: dict[str, Any]) -> Any | None:
    """The :class:`~aniso.published.dataset.PublishedDataset` that ``--substitutes`` names, or
    None when it names an embedding input.

    ``dataset`` given: ``url`` is the storage root (``version`` or ``LATEST``). Otherwise a URL
    ending in ``<dataset>/published/<version>`` whose ``manifest.json`` exists is that version.
    """
    from aniso.published.dataset import open_published

    if dataset is None:
        if version is not None:
            raise InputError("--version needs --dataset (--substitutes ROOT --dataset D --version V)")
        parts = url.rstrip("/").rsplit("/", 3)
        if len(parts) < 4 or parts[2] != "published" or not exists(join_url(url, "manifest.json"), options):
            return None
        root, dataset, _, version = parts
    else:
        root = url
    try:
        return open_published(root or "/", dataset, version=version, storage_options=options, lease_s=None)
    except StoreNotFound as exc:  # what the command was asked to read does not exist: bad input
        raise InputError(f"substitutes: {exc}") from exc


def _published_rows(published: Any, rows: np.ndarray, n_text: int) -> np.ndarray:
    manifest = published.manifest
    if manifest["n_rows"] != n_text:
        raise InputError(f"substitutes: published {manifest['dataset']} version {manifest['version']} has "
                         f"{manifest['n_rows']} rows, the text input {n_text}: not the substitutes of this text")
    return np.asarray(published.embedding[np.sort(rows)], dtype=np.float32)


def diagnose_inputs(text: str, image: str, substitutes: str | None, *, dataset: str | None, version: str | None,
                    pairs: bool, max_rows: int, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """``({"raw text": metrics, ["substitutes": metrics]}, {"text": n, "image": n, "text_sampled": k,
    "image_sampled": k})``; InputError for unusable inputs (naming the input and why)."""
    from aniso.io.inputs import open_embedding_source
    from aniso.numeric.sampling import collect_rows, sample_indices
    from aniso.quality.diagnostics import diagnose as run_diagnostics
    from aniso.stages.preflight import MIN_ROWS

    if max_rows < MIN_ROWS:
        raise InputError(f"--max-rows must be at least {MIN_ROWS} (the kNN metrics compare 10 neighbours), got {max_rows}")
    if substitutes is None and (dataset is not None or version is not None):
        raise InputError("--dataset and --version name a published version: give its root with --substitutes ROOT")
    sources = {"text": open_embedding_source(text, options, what="text"),
               "image": open_embedding_source(image, options, what="image")}
    published = published_substitutes(substitutes, dataset, version, options) if substitutes else None
    if substitutes and published is None:
        sources["substitutes"] = open_embedding_source(substitutes, options, what="substitutes")
    urls = {"text": text, "image": image, "substitutes": substitutes}
    dims = {name: src.dim for name, src in sources.items()}
    if published is not None:
        dims["substitutes"] = int(published.manifest["dim"])
    for name, dim in dims.items():
        if dim != sources["text"].dim:
            raise InputError(f"{name} embeddings ({urls[name]}) have d={dim} but text embeddings ({text}) "
                             f"have d={sources['text'].dim}")
    for name, src in sources.items():
        if src.n_rows < MIN_ROWS:
            raise InputError(f"{name} input {urls[name]} has {src.n_rows} row(s); at least {MIN_ROWS} are needed "
                             "(the kNN metrics compare 10 neighbours)")
    if pairs and sources["text"].n_rows != sources["image"].n_rows:
        raise InputError(f"--pairs needs as many image rows as text rows: {sources['text'].n_rows} vs {sources['image'].n_rows}")
    text_rows = sample_indices(sources["text"].n_rows, max_rows, seed=0)
    arrays = {
        name: collect_rows(src, text_rows if name != "image" or pairs else sample_indices(src.n_rows, max_rows, seed=1),
                           what=name)
        for name, src in sources.items()
    }
    if published is not None:
        arrays["substitutes"] = _published_rows(published, text_rows, sources["text"].n_rows)
    rows = {"raw text": run_diagnostics(arrays["text"], arrays["image"], paired=pairs)}
    if "substitutes" in arrays:
        rows["substitutes"] = run_diagnostics(arrays["text"], arrays["image"], arrays["substitutes"], paired=pairs)
    counts = {"text": sources["text"].n_rows, "image": sources["image"].n_rows,
              "text_sampled": len(arrays["text"]), "image_sampled": len(arrays["image"])}
    return rows, counts
