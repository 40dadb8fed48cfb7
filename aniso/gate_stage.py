"""The gate stage: gather what the gates judge, evaluate them, write ``quality/``.

:func:`gate_run` reads the substitutes' shard markers (statistics computed during apply), the id
columns, and deterministic samples of rows (:func:`read_sample`); never the whole embedding
arrays, so its cost does not grow with the corpus. The gates themselves (suites, evaluation
with great-expectations) are in :mod:`aniso.gates`; the metrics in :mod:`aniso.gate_metrics`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._fs import join_url, open_url
from .errors import InputError
from .inplace import open_rows
from .methods import Aligner
from .pipeline import write_json
from .sampling import sample_indices
from .store import EmbeddingStore

__all__ = ["gate_run", "read_sample"]

logger = logging.getLogger(__name__)


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
    from .gate_metrics import centroid_metrics, sample_metrics, shard_table
    from .gates import evaluate_gates

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
        pending = {name: pool.submit(sample_metrics, x64, x64 if name == "raw text" else ref, t64, settings=settings)
                   for name, ref in stand_ins.items()}
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
