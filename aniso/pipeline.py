"""The pipeline's stages as plain functions, one shard per call (pangeo-forge style).

Prefect tasks in ``tasks/`` are thin wrappers around these; the functions take and return small
values (URLs, shard numbers, stats dicts), never whole arrays, and each one is idempotent: its
output is complete only when its marker exists, and calling it again for a completed unit is a
cheap no-op. Nothing here imports Prefect.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import numpy as np

from ._fs import exists, join_url, open_url
from .arrays import row_norms
from .errors import InputError
from .inplace import NpyView, create_view, open_rows
from .inputs import open_embedding_source
from .methods import Aligner, get_aligner
from .moments import Moments, merge_all
from .sampling import rows_in_range, sample_indices
from .store import EmbeddingStore, ids_digest

__all__ = [
    "prepare_input",
    "import_shard",
    "check_unique_ids",
    "shard_moments",
    "reduce_moments",
    "sample_rows",
    "fit_model",
    "calibration_shard",
    "finish_calibration",
    "prepare_substitutes",
    "apply_shard",
]

logger = logging.getLogger(__name__)

#: Rows transformed at a time inside a shard: the methods' float64 temporaries stay at a few MiB
#: per block instead of several copies of the whole shard (the maps are row-wise, so the result
#: does not depend on it).
APPLY_BLOCK = 8192


# -- ingest of precomputed embeddings ----------------------------------------------------------
def prepare_input(
    url: str, store_url_for: Any, *, modality: str, chunk_rows: int, shard_rows: int,
    storage_options: dict[str, Any], attrs: dict[str, Any] | None = None, in_place: bool = True,
    ids: str = "auto",
) -> tuple[str, str, list[int]]:
    """Open an input and create (or reopen) what the later stages read it through.

    ``store_url_for(fingerprint)`` maps the input's fingerprint to the store URL. An input that
    already is a complete aniso store is used as it is; a ``.npy`` / clip-retrieval input is read
    in place through an :class:`~aniso.inplace.NpyView` (its rows are validated by the statistics
    pass, which reads every row anyway), or, with ``in_place=False``, copied into a Zarr store
    shard by shard (:func:`import_shard`). Returns ``(store_url, fingerprint, shards still to
    import)``.
    """
    source = open_embedding_source(url, storage_options, what=f"{modality} input {url}", ids=ids)
    if source.store is not None:
        return source.url, source.fingerprint, []
    store_url = store_url_for(source.fingerprint)
    if in_place:
        # .npy / clip-retrieval rows are read where they are, by byte ranges: no copy into Zarr
        view = create_view(store_url.removesuffix(".zarr") + ".npy-view", source, chunk_rows=chunk_rows,
                           shard_rows=shard_rows, storage_options=storage_options)
        return view.url, source.fingerprint, []
    store = EmbeddingStore.create(
        store_url, n_rows=source.n_rows, dim=source.dim, chunk_rows=chunk_rows, shard_rows=shard_rows,
        attrs={"source": _redact(url), "modality": modality, "fingerprint": source.fingerprint, **(attrs or {})},
        storage_options=storage_options,
    )
    pending = sorted(set(range(store.n_shards)) - store.completed_shards())
    return store_url, source.fingerprint, pending


def import_shard(url: str, store_url: str, shard: int, storage_options: dict[str, Any], ids: str = "auto") -> dict[str, Any]:
    """Copy one shard of rows from an input into its store (validated: finite, right width)."""
    store = EmbeddingStore.open(store_url, storage_options=storage_options, mode="r+")
    if shard in store.completed_shards():
        return store.marker(shard)
    source = open_embedding_source(url, storage_options, ids=ids)
    start, stop = store.shard_range(shard)
    emb, ids = source.read_rows(start, stop)
    norms = row_norms(emb.astype(np.float64))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InputError(f"{url}: row {start + int(zero[0])} is an all-zero embedding")
    return store.write_shard(shard, emb, ids)


def _embedding_of(store: Any, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """``(embedding, valid)`` of one shard; an in-place input skips reading its ids."""
    if isinstance(store, NpyView):
        emb, _, valid = store.read_shard(shard, with_ids=False)
        return emb, valid
    emb, _, valid = store.read_shard(shard)
    return emb, valid


def needs_id_check(store_url: str, storage_options: dict[str, Any]) -> bool:
    """Does an in-place input carry its own ids (clip-retrieval metadata) to check for duplicates?"""
    store = open_rows(store_url, storage_options)
    return isinstance(store, NpyView) and any(p.ids_url for p in store.source.parts)


def check_unique_ids(store_url: str, storage_options: dict[str, Any], *, what: str) -> None:
    """Raise InputError naming a duplicated id (ids must identify rows end to end).

    Reads the id column only (never the embeddings).
    """
    store = open_rows(store_url, storage_options)
    seen: dict[str, int] = {}
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        ids = store.ids[start:stop]
        for offset, value in enumerate(ids):
            value = str(value)
            if value in seen:
                raise InputError(f"{what}: id {value!r} appears at rows {seen[value]} and {start + offset}")
            seen[value] = start + offset


# -- statistics -------------------------------------------------------------------------------
def _stats_url(store_url: str, name: str) -> str:
    return join_url(store_url, "_stats", f"{name}.npz")


def _save_moments(url: str, moments: Moments, options: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **moments.to_arrays(""))
    with open_url(url, "wb", options) as f:
        f.write(buffer.getvalue())


def load_moments(url: str, options: dict[str, Any]) -> Moments:
    with open_url(url, "rb", options) as f:
        with np.load(io.BytesIO(f.read())) as npz:
            return Moments.from_arrays(dict(npz), "")


def statistics_kind(method: str) -> str:
    """``"full"`` or ``"trace"``: the statistics ``method`` declares it needs."""
    from .methods import aligner_class

    cls = aligner_class(method)
    return cls.statistics if cls is not None else "full"


def shard_moments(store_url: str, shard: int, storage_options: dict[str, Any], kind: str = "full") -> str:
    """Moments (``kind`` "full" or "trace") of one shard's valid rows, stored beside the data;
    returns their URL. Float32 products with float64 accumulation (see :mod:`aniso.moments`)."""
    url = _stats_url(store_url, f"moments-{kind}-{shard:06d}")
    if exists(url, storage_options):
        return url
    emb, valid = _embedding_of(open_rows(store_url, storage_options), shard)
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
            emb, valid = _embedding_of(store, shard)
            parts.append(emb[valid][local])
    return np.concatenate(parts) if parts else np.empty((0, store.dim), np.float32)


# -- fit and calibration ----------------------------------------------------------------------
def fit_model(
    model_url: str, method: str, params: dict[str, Any], text_stats_url: str, image_stats_url: str,
    text_store_url: str, image_store_url: str, *, seed: int, sample_size: int | None,
    storage_options: dict[str, Any],
) -> str:
    """Fit the aligner (everything but the calibration) and save it; skipped when saved already."""
    if exists(join_url(model_url, "aligner.json"), storage_options):
        return model_url
    aligner = get_aligner(method, **params)
    text_stats = load_moments(text_stats_url, storage_options)
    image_stats = load_moments(image_stats_url, storage_options)
    samples: dict[str, np.ndarray | None] = {"text": None, "image": None}
    want = sample_size or aligner.sample_size
    if aligner.sample_size > 0:
        for name, stats, store_url, sub_seed in (
            ("text", text_stats, text_store_url, seed), ("image", image_stats, image_store_url, seed + 1)
        ):
            store = open_rows(store_url, storage_options)
            samples[name] = sample_rows(store, sample_indices(stats.n, want, sub_seed))
    aligner.fit_statistics(text_stats, image_stats, text_sample=samples["text"], image_sample=samples["image"])
    aligner.save(model_url, storage_options)
    return model_url


def calibration_shard(model_url: str, text_store_url: str, shard: int, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Partial sum of x̂ over one shard of text (the calibration pass)."""
    aligner = Aligner.load(model_url, storage_options)
    emb, valid = _embedding_of(open_rows(text_store_url, storage_options), shard)
    if not valid.any():
        return {"sum": [0.0] * aligner.dim, "n": 0}
    rows = emb if valid.all() else emb[valid]
    total, count = np.zeros(aligner.dim or rows.shape[1]), 0
    for start in range(0, rows.shape[0], APPLY_BLOCK):  # bounded float64 temporaries
        part_sum, part_n = aligner.premap_sum(rows[start : start + APPLY_BLOCK])
        total += part_sum
        count += part_n
    return {"sum": total.tolist(), "n": count}


def finish_calibration(model_url: str, partials: list[dict[str, Any]], storage_options: dict[str, Any]) -> str:
    """Set μ̂ from the partial sums (in shard order, so the result is reproducible) and re-save."""
    aligner = Aligner.load(model_url, storage_options)
    if not aligner.calibrate or aligner.mu_hat is not None:
        return model_url
    total = np.sum([np.asarray(p["sum"], dtype=np.float64) for p in partials], axis=0)
    count = sum(p["n"] for p in partials)
    if count == 0:
        raise InputError("calibration saw no valid text rows")
    aligner.set_calibration(total / count).save(model_url, storage_options)
    return model_url


def model_is_final(model_url: str, storage_options: dict[str, Any]) -> bool:
    if not exists(join_url(model_url, "aligner.json"), storage_options):
        return False
    aligner = Aligner.load(model_url, storage_options)
    return not aligner.calibrate or aligner.mu_hat is not None


# -- apply ------------------------------------------------------------------------------------
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
    aligner = Aligner.load(model_url, storage_options)
    emb, ids, valid = open_rows(text_store_url, storage_options).read_shard(shard)
    read_s = time.perf_counter() - started
    out = np.zeros((emb.shape[0], emb.shape[1]), dtype=np.float32)
    if valid.any():
        every = bool(valid.all())
        rows = emb if every else emb[valid]
        target = out if every else np.empty((rows.shape[0], emb.shape[1]), np.float32)
        for i in range(0, rows.shape[0], APPLY_BLOCK):
            target[i : i + APPLY_BLOCK] = aligner.transform(rows[i : i + APPLY_BLOCK])
        if not every:
            out[valid] = target
    compute_s = time.perf_counter() - started - read_s
    stats = shard_quality(out if valid.all() else out[valid], list(ids[valid]))
    stats.update(read_seconds=read_s, compute_seconds=compute_s)
    marker = subs.write_shard(shard, out, list(ids), valid=valid, stats=stats)
    marker["stats"]["write_seconds"] = time.perf_counter() - started - read_s - compute_s
    return marker


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


# -- helpers ----------------------------------------------------------------------------------
def _redact(url: str) -> str:
    """Drop any ``user:password@`` part of a URL before it is written anywhere."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def write_json(url: str, payload: dict[str, Any], storage_options: dict[str, Any]) -> None:
    with open_url(url, "w", storage_options) as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
