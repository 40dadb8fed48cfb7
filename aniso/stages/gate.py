"""The gate stage: gather what the gates judge, evaluate them, write ``quality/``.

Two halves, so that most of the work is off the critical path:

* :func:`prepare_gate_sample` needs only the fitted model and the inputs. It draws a deterministic
  sample of text rows (:func:`gate_rows`) and of image rows, lets the model map the text sample
  (every aligner maps each row on its own, bit for bit, docs/method.md §8), and computes every
  sample metric and the report's sample-based content. ``produce`` runs it while the apply stage
  writes the substitutes.
* :func:`gate_run`, after apply, reads the substitutes' shard markers (statistics computed during
  apply), the id digests, and the sampled substitute rows. Those rows must equal the prepared ones
  bit for bit; where they do not, every sample metric is computed again from the rows read, so the
  gates always judge what was written. It never reads the whole embedding arrays, so its cost
  does not grow with the corpus.

The gates themselves (suites, evaluation with great-expectations) are in :mod:`aniso.quality.gates`; the
metrics in :mod:`aniso.quality.gate_metrics`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aniso._fs import join_url, open_url, write_json
from aniso.io.npy_view import NpyView
from aniso.io.rows import open_rows
from aniso.io.store import EmbeddingStore
from aniso.methods import Aligner
from aniso.numeric.sampling import sample_indices

if TYPE_CHECKING:
    from aniso.quality.gates import GateValidator

__all__ = ["GateSample", "Samples", "gate_rows", "read_rows_at", "draw_samples", "prepare_gate_sample", "gate_run"]

logger = logging.getLogger(__name__)

#: :func:`draw_samples`: ``(sorted text rows, text sample, image sample or None)``.
Samples = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def gate_rows(store: EmbeddingStore | NpyView, size: int, seed: int, *, max_chunks: int = 0) -> np.ndarray:
    """Sorted global indices of a deterministic sample of ``size`` valid rows of ``store``.

    At most ``max_chunks`` read chunks (0: all) are picked with :func:`sample_indices`, and
    ``size`` rows among their valid ones, so reading the sample costs at most ``max_chunks``
    chunks whatever the corpus size.
    """
    step = store.chunk_rows
    n_chunks = -(-store.n_rows // step)
    chosen = sample_indices(n_chunks, max_chunks, seed) if max_chunks else np.arange(n_chunks)
    candidates = []
    for c in chosen.tolist():
        start, stop = c * step, min((c + 1) * step, store.n_rows)
        candidates.append(start + np.flatnonzero(store.read_valid(start, stop)))
    rows = np.concatenate(candidates) if candidates else np.empty(0, np.int64)
    return rows[sample_indices(rows.size, size, seed + 1)]


def read_rows_at(store: EmbeddingStore | NpyView, rows: np.ndarray) -> np.ndarray:
    """The embeddings (float32) at sorted global ``rows``: a store fetches the chunks they touch in
    one call, a local in-place input reads just those rows, a remote one a range per chunk."""
    direct = store.read_rows_at(rows) if rows.size else None
    if direct is not None:
        return direct.astype(np.float32, copy=False)
    out = np.empty((rows.size, store.dim), np.float32)
    chunk_of = rows // store.chunk_rows
    for c in np.unique(chunk_of).tolist():
        lo, hi = np.searchsorted(chunk_of, [c, c + 1])
        first, last = int(rows[lo]), int(rows[hi - 1])
        emb, _, _ = store.read_rows(first, last + 1, with_ids=False)
        out[lo:hi] = emb[rows[lo:hi] - first]
    return out


@dataclass
class GateSample:
    """The samples the gates judge and everything computed from them before apply finishes."""

    rows: np.ndarray  # sorted global text rows of the sample
    text: np.ndarray  # (n, d) float32
    subs: np.ndarray  # (n, d) float32: the model's substitutes for ``text`` (apply must write these)
    image: np.ndarray | None  # (m, d) float32, or None without an image store
    metrics: dict[str, Any]  # gate_metrics.sample_metrics of the three
    references: dict[str, dict[str, Any]]  # the report's reference metrics, by name
    report: dict[str, Any]  # report.sample_content, or {} without a report
    ids_digests: dict[int, str]  # an in-place input's id digest per shard (derived, not stored)
    centroids: tuple[np.ndarray, np.ndarray]  # the model's (μ_image, μ_text)
    validator: GateValidator  # the gate suites, ready for great-expectations
    seconds: float


def _judge(text: np.ndarray, subs: np.ndarray, image: np.ndarray | None, settings: Any
           ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """``(metrics, references, report content)`` of a sample: what :class:`GateSample` holds."""
    from aniso.quality.gate_metrics import sample_metrics

    x64, s64 = text.astype(np.float64), subs.astype(np.float64)
    t64 = None if image is None else image.astype(np.float64)
    stand_ins: dict[str, np.ndarray] = {}
    if settings.report:
        from aniso.quality.report import reference_stand_ins

        stand_ins = reference_stand_ins(text, image)
    # the report's reference metrics (same samples, raw text and centroid baseline in place of the
    # substitutes) run beside the gated ones: numpy releases the GIL
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="aniso-gate-metrics") as pool:
        pending = {name: pool.submit(sample_metrics, x64, x64 if name == "raw text" else ref, t64, settings=settings)
                   for name, ref in stand_ins.items()}
        metrics = sample_metrics(x64, s64, t64, settings=settings)
        references = {name: future.result() for name, future in pending.items()}
    content = {}
    if settings.report:
        from aniso.quality.report import sample_content

        content = sample_content(text, subs, image)
    return metrics, references, content


def draw_samples(text_store: EmbeddingStore | NpyView, image_store_url: str | None, settings: Any,
                 storage_options: dict[str, Any]) -> Samples:
    """The gate's deterministic samples: ``(text rows, text sample, image sample or None)``.

    The same rows for the gates, the report and the input-drift reference and gate
    (:mod:`aniso.stages.frozen`), from ``settings`` (:class:`aniso.config.GateSettings`).
    """
    rows = gate_rows(text_store, settings.sample_rows, settings.seed, max_chunks=settings.sample_chunks)
    image = None
    if image_store_url:
        image_store = open_rows(image_store_url, storage_options)
        image = read_rows_at(image_store, gate_rows(image_store, settings.distribution_sample_rows, settings.seed + 7,
                                                    max_chunks=settings.sample_chunks))
    return rows, read_rows_at(text_store, rows), image


def prepare_gate_sample(
    model_url: str, text_store_url: str, settings: Any, storage_options: dict[str, Any],
    image_store_url: str | None = None, *, output_dtype: str = "float32",
    samples: Samples | None = None,
) -> GateSample:
    """Draw the gate samples, map the text sample with the model, compute the sample metrics.

    Needs no substitutes: ``produce`` runs it beside the apply stage, and :func:`gate_run`
    checks the result against the rows apply wrote.

    Parameters
    ----------
    settings
        :class:`aniso.config.GateSettings`.
    output_dtype
        The substitutes' stored dtype (``store.output_dtype``): the mapped sample is rounded
        to it, as apply's rows are when written.
    samples
        :func:`draw_samples` of the same inputs and settings when the caller has drawn them
        already (``produce`` draws them once for the drift reference or gate and for this).
    """
    from aniso.quality.gates import GateValidator

    started = time.perf_counter()
    text_store = open_rows(text_store_url, storage_options)
    rows, text, image = samples or draw_samples(text_store, image_store_url, settings, storage_options)
    aligner = Aligner.load(model_url, storage_options)
    subs = aligner.transform(text) if rows.size else text.copy()
    if np.dtype(output_dtype) != np.float32:
        subs = subs.astype(output_dtype).astype(np.float32)
    metrics, references, content = _judge(text, subs, image, settings)
    digests = {s: text_store.ids_digest(s) for s in range(text_store.n_shards)} if isinstance(text_store, NpyView) else {}
    validator = GateValidator(settings, expected_rows=text_store.count_valid())
    return GateSample(rows, text, subs, image, metrics, references, content, digests,
                      (aligner.mu_image, aligner.mu_text), validator,
                      time.perf_counter() - started)


def gate_run(
    model_url: str, text_store_url: str, subs_url: str, quality_url: str, settings: Any,
    storage_options: dict[str, Any], image_store_url: str | None = None, sample: GateSample | None = None,
    run_key: str | None = None, run_record: str | None = None, earlier: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate the gates of a run and write ``quality/`` (stats, gates.json, report); return gates.

    Reads the substitutes' shard markers (stats computed during apply), the id digests of text and
    substitutes, and the sampled substitute rows; never the whole embedding arrays.

    Parameters
    ----------
    settings
        :class:`aniso.config.GateSettings`.
    image_store_url
        The image store, for the reported distribution metrics and the report's image spectrum.
    sample
        :func:`prepare_gate_sample` of the same model, inputs and settings, computed while apply
        ran; prepared here when not given.
    run_key, run_record
        The run's key (the report's title) and its ``run.json`` (the report's identity rows;
        :meth:`aniso.io.layout.DatasetLayout.run_record`), when the run has them.
    earlier
        Gate results judged earlier in the run (the ``input_drift`` gate of a frozen-model run,
        judged before apply), recorded, reported and counted with these.

    Returns
    -------
    dict
        ``passed``, ``results`` (``name``, ``observed``, ``bound``, ``passed``, ...), ``metrics``,
        ``seconds``, ``report`` (URLs of report.html / report.json, when written), ``timings``
        (seconds per step; ``prepared`` is the time :func:`prepare_gate_sample` took, wherever
        it ran).
    """
    from aniso.quality.gate_metrics import centroid_metrics, shard_table
    from aniso.quality.gates import evaluate_gates

    started = time.perf_counter()
    subs_store = EmbeddingStore.open(subs_url, storage_options=storage_options)
    if sample is None:
        sample = prepare_gate_sample(model_url, text_store_url, settings, storage_options, image_store_url,
                                     output_dtype=str(subs_store.embedding.dtype))
        started = time.perf_counter()
    timings = {"prepared": sample.seconds}
    text = open_rows(text_store_url, storage_options)
    markers = subs_store.markers()
    same_shape = text.shape == subs_store.shape and text.shard_rows == subs_store.shard_rows
    ids_match = [same_shape and _same_ids(text, subs_store, m, sample.ids_digests) for m in markers]
    stats = [m["stats"] for m in markers]
    timings["read_stats"] = time.perf_counter() - started
    metrics: dict[str, Any] = centroid_metrics(stats, *sample.centroids)
    mark = time.perf_counter()
    if same_shape:
        written = read_rows_at(subs_store, sample.rows)
        sample_metrics_, references, content = sample.metrics, sample.references, sample.report
        if not np.array_equal(written, sample.subs, equal_nan=True):
            logger.warning("the sampled substitutes differ from the model's own map of their text rows; "
                           "the sample metrics are computed from the rows read")
            sample_metrics_, references, content = _judge(sample.text, written, sample.image, settings)
        x, s = sample.text, written
    else:  # the id gate fails; no row-aligned sample exists
        empty = np.empty((0, text.dim), np.float32)
        x = s = empty
        sample_metrics_, references, content = _judge(empty, empty, sample.image, settings)
    metrics.update(sample_metrics_)
    timings["read_sample"] = time.perf_counter() - mark
    table = shard_table(stats, ids_match)
    report = evaluate_gates(table, metrics, expected_rows=text.count_valid(), settings=settings,
                            validator=sample.validator)
    timings["great_expectations"] = report.seconds
    with open_url(join_url(quality_url, "shard_stats.parquet"), "wb", storage_options) as f:
        table.assign(**pd_timings(stats)).to_parquet(f, index=False)
    report.seconds = time.perf_counter() - started
    result = report.to_dict()
    if earlier:
        result["results"] = [*result["results"], *earlier]
        result["passed"] = bool(result["passed"] and all(r["passed"] for r in earlier))
    if settings.report:
        from aniso.quality.report import write_report

        mark = time.perf_counter()
        result["report"] = write_report(
            quality_url, result, table, text=x, subs=s, image=sample.image, storage_options=storage_options,
            title=f"aniso run {run_key}" if run_key else "aniso run", references=references,
            samples=content, identity_url=run_record,
        )
        timings["report"] = time.perf_counter() - mark
    result["timings"] = timings
    result["seconds"] = time.perf_counter() - started
    write_json(join_url(quality_url, "gates.json"), result, storage_options)
    logger.info("gate stage: %s in %.2f s (samples prepared in %.2f s)", report.summary(), result["seconds"],
                sample.seconds)
    return result


def _same_ids(text: EmbeddingStore | NpyView, subs: EmbeddingStore, marker: dict[str, Any],
              digests: dict[int, str]) -> bool:
    """Do a substitutes shard's ids equal the text shard's? From the id digests when both sides
    have one (the text's from its marker, or ``digests`` of an in-place input: no id arrays
    read), else by comparing the id arrays."""
    text_digest = text.marker(marker["shard"]).get("ids_sha256") or digests.get(marker["shard"])
    if "ids_sha256" in marker and text_digest is not None:
        return marker["ids_sha256"] == text_digest
    start, stop = marker["start"], marker["stop"]
    return bool(np.array_equal(text.ids[start:stop], subs.ids[start:stop]))


def pd_timings(stats: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The per-shard apply timings recorded in the markers (for the shard table on disk)."""
    keys = ("read_seconds", "compute_seconds", "write_seconds")
    return {k: [float(s.get(k, float("nan"))) for s in stats] for k in keys}
