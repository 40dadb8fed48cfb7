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
from concurrent.futures import ThreadPoolExecutor
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

    The markers give each shard's valid-row range, so only shards holding sampled rows are read.
    """
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

    Works on the float32 rows in place (float64 accumulation, no float64 copy of the shard).
    """
    finite = np.isfinite(subs).all(axis=1)
    good = subs if finite.all() else subs[finite]
    norms = np.sqrt(np.einsum("ij,ij->i", good, good, dtype=np.float64))  # NaN rows: nonfinite_rows
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


# -- gates ------------------------------------------------------------------------------------
def read_sample(
    stores: list[EmbeddingStore], size: int, seed: int, *, max_chunks: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A deterministic sample of the same valid rows from row-aligned stores, read chunk-wise.

    At most ``max_chunks`` read chunks (0: all) are picked with :func:`sample_indices`, and
    ``size`` rows among their valid ones (validity from ``stores[0]``). Only those chunks are
    read (chunk = read unit), so the cost does not grow with the corpus.

    Returns
    -------
    list of (embedding, ids)
        One pair per store, row-aligned.
    """
    first = stores[0]
    for other in stores[1:]:
        if other.n_rows != first.n_rows:
            raise InputError(f"{other.url} has {other.n_rows} rows but {first.url} has {first.n_rows}")
    step = first.chunk_rows
    n_chunks = -(-first.n_rows // step)
    chosen = sample_indices(n_chunks, max_chunks, seed) if max_chunks else np.arange(n_chunks)
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in stores]
    for c in chosen.tolist():
        start, stop = c * step, min((c + 1) * step, first.n_rows)
        valid = None
        for k, store in enumerate(stores):
            emb, ids, v = store.read_rows(start, stop)
            valid = v if valid is None else valid
            parts[k].append((emb[valid], ids[valid]))
    out = []
    n_valid = sum(p[0].shape[0] for p in parts[0])
    keep = sample_indices(n_valid, size, seed + 1)
    for k in range(len(stores)):
        emb = np.concatenate([p[0] for p in parts[k]]) if parts[k] else np.empty((0, first.dim), np.float32)
        ids = np.concatenate([p[1] for p in parts[k]]) if parts[k] else np.empty(0, object)
        out.append((emb[keep], ids[keep]))
    return out


def gate_run(
    model_url: str, text_store_url: str, subs_url: str, quality_url: str, settings: Any,
    storage_options: dict[str, Any], image_store_url: str | None = None,
) -> dict[str, Any]:
    """Evaluate the gates of a run and write ``quality/`` (stats, gates.json, report); return gates.

    Reads the substitutes' shard markers (stats computed during apply), the id columns of text and
    substitutes, and a deterministic sample of rows (text, its substitutes and, when
    ``image_store_url`` is given, image rows); never the whole embedding arrays.

    Parameters
    ----------
    settings
        :class:`aniso.config.GateSettings`.
    image_store_url
        The image store, for the reported distribution metrics and the report's image spectrum.

    Returns
    -------
    dict
        ``passed``, ``results`` (``name``, ``observed``, ``bound``, ``passed``, ...), ``metrics``,
        ``seconds``, ``report`` (URLs of report.html / report.json, when written).
    """
    from .gates import centroid_metrics, evaluate_gates, sample_metrics, shard_table

    started = time.perf_counter()
    text = open_rows(text_store_url, storage_options)
    subs = EmbeddingStore.open(subs_url, storage_options=storage_options)
    markers = subs.markers()
    same_shape = text.shape == subs.shape and text.shard_rows == subs.shard_rows
    ids_match = [same_shape and _same_ids(text, subs, m) for m in markers]
    aligner = Aligner.load(model_url, storage_options)
    stats = [m["stats"] for m in markers]
    timings = {"read_stats": time.perf_counter() - started}
    metrics: dict[str, Any] = centroid_metrics(stats, aligner.mu_image, aligner.mu_text)
    (x, _), (s, _) = read_sample([text, subs], settings.sample_rows, settings.seed, max_chunks=settings.sample_chunks) \
        if same_shape else ((np.empty((0, text.dim)), None), (np.empty((0, text.dim)), None))
    t = None
    if image_store_url:
        image = open_rows(image_store_url, storage_options)
        [(t, _)] = read_sample([image], settings.distribution_sample_rows, settings.seed + 7,
                               max_chunks=settings.sample_chunks)
    timings["read_sample"] = time.perf_counter() - started - sum(timings.values())
    x64, s64 = x.astype(np.float64), s.astype(np.float64)
    t64 = None if t is None else t.astype(np.float64)
    stand_ins = {}
    if settings.report:
        from .report import reference_stand_ins

        stand_ins = reference_stand_ins(x, t)
    # the report's reference metrics (same samples, raw text and centroid baseline in place of the
    # substitutes) run beside the gated ones: numpy releases the GIL, the gate stage has the cores
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="aniso-gate-metrics") as pool:
        pending = {name: pool.submit(sample_metrics, x64, ref, t64, settings=settings) for name, ref in stand_ins.items()}
        metrics.update(sample_metrics(x64, s64, t64, settings=settings))
        references = {name: future.result() for name, future in pending.items()}
    timings["sample_metrics"] = time.perf_counter() - started - sum(timings.values())
    table = shard_table(stats, ids_match)
    report = evaluate_gates(table, metrics, expected_rows=text.count_valid(), settings=settings)
    timings["great_expectations"] = report.seconds
    with open_url(join_url(quality_url, "shard_stats.parquet"), "wb", storage_options) as f:
        table.assign(**pd_timings(stats)).to_parquet(f, index=False)
    report.seconds = time.perf_counter() - started
    result = report.to_dict()
    if settings.report:
        from .report import write_report

        result["report"] = write_report(
            quality_url, result, table, text=x, subs=s, image=t, storage_options=storage_options,
            title=f"aniso run {quality_url.rstrip('/').rsplit('/', 2)[-2]}", references=references,
        )
        timings["report"] = time.perf_counter() - started - sum(timings.values())
    result["timings"] = timings
    result["seconds"] = time.perf_counter() - started
    write_json(join_url(quality_url, "gates.json"), result, storage_options)
    logger.info("gate stage: %s in %.2f s", report.summary(), time.perf_counter() - started)
    return result


def _same_ids(text: EmbeddingStore, subs: EmbeddingStore, marker: dict[str, Any]) -> bool:
    """Do a substitutes shard's ids equal the text shard's? From the markers' id digests when
    both have one (no id arrays read), else by comparing the id arrays."""
    text_marker = text.marker(marker["shard"])
    if "ids_sha256" in marker and "ids_sha256" in text_marker:
        return marker["ids_sha256"] == text_marker["ids_sha256"]
    start, stop = marker["start"], marker["stop"]
    return bool(np.array_equal(text.ids[start:stop], subs.ids[start:stop]))


def pd_timings(stats: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The per-shard apply timings recorded in the markers (for the shard table on disk)."""
    keys = ("read_seconds", "compute_seconds", "write_seconds")
    return {k: [float(s.get(k, float("nan"))) for s in stats] for k in keys}
