"""The whole job: embed or ingest → statistics → fit → calibrate → apply → gate → publish.

With ``settings.method.model`` (``aniso produce --model REF``) the statistics and fit stages are
replaced by a copy of the frozen model (:mod:`aniso.stages.frozen`); every gate still runs.

Every stage skips work already completed for the run key (inputs + semantic config + code
version), so a rerun after a crash anywhere resumes and produces identical output.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from aniso._fs import absolute_url, join_url, redact_url, write_json
from aniso._version import code_version
from aniso.config import Settings, config_hash, load_settings, semantic_config
from aniso.errors import ConfigError, GateFailed, InputError
from aniso.io.inputs import is_embedding_input, open_embedding_source
from aniso.io.layout import DatasetLayout, input_record, run_key, run_lineage
from aniso.published.guard import check_schema
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import DATA_PATH, read_json
from aniso.published.model import ModelSource, model_identity, resolve_model, write_model_copy
from aniso.io.rows import StoreRef, describe, open_rows
from aniso.quality.gates import load_suites, preload_in_background
from aniso.quality.metric_info import format_value
from aniso.stages.gate import GateSample, draw_samples, prepare_gate_sample
from aniso.stages.fit import model_is_final
from aniso.stages.frozen import input_drift, save_drift_reference
from aniso.stages.preflight import preflight
from aniso.stages.statistics import statistics_kind
from aniso.tasks.gate import gate
from aniso.tasks.publish import publish

from ._common import (SettingsTaskRunner, announce_dashboard, probe_workers, run_stage, use_settings_cluster,
                      wait_for_workers)
from ._supervise import note_flow_run
from .apply import apply_model
from .fit import fit_and_calibrate
from .ingest import ingest_embeddings, ingest_inputs
from .statistics import compute_statistics_together

logger = logging.getLogger(__name__)


def embeddings_for(url: str, modality: str, layout: DatasetLayout, settings: Settings) -> StoreRef:
    """The embedding store for an input: imported when it holds embeddings, embedded when it is
    a raw corpus."""
    options = settings.storage.fs_options()
    if is_embedding_input(url, options):
        return ingest_embeddings(url, modality, layout, settings)
    from .embed import embed_corpus  # torch/open_clip load only when a raw corpus is embedded

    store_url = embed_corpus(url, modality, settings)["store"]
    # the fingerprint of what was embedded: the stored rows' checksums (model + corpus content)
    source = open_embedding_source(store_url, options)
    return describe(source.store, source.fingerprint)


#: GIL switch interval while the stages run (Python's default is 5 ms). Dask's worker threads
#: share the process with the flow, Prefect's client and zarr's I/O loop; each numpy call a worker
#: makes re-takes the GIL and, behind a Python-busy thread, waits up to the interval. Measured
#: with the fused ReAlign kernel on two threads beside one busy thread (4,096-row blocks): 3.1 s
#: per 65,536-row shard at 5 ms, 0.7 s at 0.5 ms; 0.25 s with no busy thread.
SWITCH_INTERVAL_S = 1e-4


@contextmanager
def _gil_handoff(interval: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@contextmanager
def _stage(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log the wall time of a stage (``stage <name>: <s> s``; bench/scale.py reads these lines),
    and record it in ``timings`` (the run report lists them)."""
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    if timings is not None:
        timings[name] = round(seconds, 3)
    logger.info("stage %s: %.2f s", name, seconds)


def _run_name() -> str:
    from prefect.runtime import flow_run

    settings = flow_run.parameters.get("settings")
    if isinstance(settings, dict):
        dataset = (settings.get("storage") or {}).get("dataset") or "default"
    else:
        dataset = getattr(getattr(settings, "storage", None), "dataset", "default")
    return f"produce-{dataset}"


def resolve_settings(settings: Settings | dict[str, Any]) -> Settings:
    """The validated settings from a flow parameter: the model itself, or (a deployment's) JSON,
    which is layered like a CLI run's ``--config`` file over ``conf/default.yaml``, the profile
    in ``ANISO_PROFILE`` and ``ANISO_*`` variables of the process running the flow."""
    if isinstance(settings, Settings):
        return settings
    if not isinstance(settings, dict):
        raise ConfigError(f"settings: expected a mapping, got {type(settings).__name__}")
    return load_settings(values=settings)


# Parameters are validated by hand below: deployments pass ``settings`` as JSON, CLI runs pass
# the model itself, and both must end up as the same validated Settings.
@flow(name="produce", flow_run_name=_run_name, validate_parameters=False, task_runner=SettingsTaskRunner())
def produce(text: str, image: str, settings: Settings | dict[str, Any]) -> dict[str, Any]:
    """Produce and publish substitute image embeddings for a text corpus.

    The flow checks the settings, inputs and output root first (:func:`aniso.stages.preflight.preflight`),
    then runs the stages itself on the Dask cluster ``settings.cluster`` names (``address``: an
    existing scheduler; else a temporary ``cluster_class`` cluster; see
    :class:`~aniso.flows._common.SettingsTaskRunner`), so a CLI run, ``serve`` and a ``prefect
    deploy`` deployment all execute on the configured cluster, and the flow run they started
    carries every stage's logs, progress and artifacts.

    Parameters
    ----------
    text, image
        Embedding inputs (a ``.npy`` file, a clip-retrieval folder, an aniso Zarr store) or raw
        corpora (text: jsonl/parquet/csv/txt; images: a folder tree or webdataset tars), which
        are embedded first with ``settings.embed``.
    settings
        The resolved settings tree (``aniso.config.load_settings``), or its JSON form. It never
        holds credentials (refused when the settings load); those come from ``AWS_*`` variables
        or profiles in the environment of the process that runs the flow.

    Returns
    -------
    dict
        ``run_key``, ``published`` (the LATEST pointer), ``gates`` and the store URLs.

    Raises
    ------
    ConfigError, InputError
        Before any heavy work, when the settings, an input or the output root are unusable.
    GateFailed
        When any gate fails; nothing is published and the run's staging data stays.
    """
    note_flow_run()  # for a supervised CLI run: its id, to report it cancelled if the run is killed
    settings = resolve_settings(settings)
    # local paths as the caller meant them: tasks may run on workers started in other directories
    text, image = absolute_url(text), absolute_url(image)
    settings.storage.root = absolute_url(settings.storage.root)
    id_source = preflight(text, image, settings)  # also refuses a --model run over an input without ids
    logger.info("task runner: %s", use_settings_cluster(settings.cluster))
    with _gil_handoff():
        return _run_stages(text, image, settings, id_source)


def _run_stages(text: str, image: str, settings: Settings, id_source: str) -> dict[str, Any]:
    """The stages of :func:`produce`, in its flow run, on its task runner; ``id_source`` as
    :func:`~aniso.stages.preflight.preflight` found it."""
    preload_in_background()  # great-expectations loads while the data stages run
    wait_for_workers(settings.cluster)
    probe_workers(text, image, settings)
    announce_dashboard()
    options = settings.storage.fs_options()
    layout = DatasetLayout(settings.storage.root, settings.storage.dataset)
    timings: dict[str, float] = {}  # seconds per stage, for the run report
    embedding_input = {"text": is_embedding_input(text, options), "image": is_embedding_input(image, options)}
    with _stage("inputs", timings):
        if all(embedding_input.values()):
            text_ref, image_ref = ingest_inputs([(text, "text"), (image, "image")], layout, settings)
        else:
            text_ref = embeddings_for(text, "text", layout, settings)
            image_ref = embeddings_for(image, "image", layout, settings)
    if text_ref.dim != image_ref.dim:
        raise InputError(f"text embeddings ({text}) have d={text_ref.dim} but image embeddings ({image}) have d={image_ref.dim}")
    text_store, image_store = text_ref.url, image_ref.url

    frozen = resolve_model(settings.method.model, layout, options) if settings.method.model else None
    # again now that the dimension of an embedded corpus is known and LATEST may have moved since preflight
    check_schema(layout, dim=text_ref.dim, dtype=settings.store.output_dtype, id_source=id_source,
                 allow=settings.publish.allow_schema_change, storage_options=options)
    drift, refit = None, None
    # the gate's samples, drawn once: the drift reference (fit) or gate (frozen model), and the gates
    samples = draw_samples(open_rows(text_store, options), image_store, settings.gates, options)
    if frozen is not None:
        with _stage("input drift"):
            drift = input_drift(frozen.url, samples, settings.gates, options)
        failed = [r for r in drift or [] if not r["passed"]]
        if failed and settings.method.refit == "on_drift":
            logger.warning("inputs drifted from model %s (%s): refitting (method.refit=on_drift)", frozen.ref,
                           ", ".join(r["name"] for r in failed))
            refit = {"reason": "input_drift", "model_version": frozen.version, "drift": drift}
            # the figures judged the old model: kept in the lineage; this run's gates judge the new fit
            frozen, drift = None, None
        elif failed:
            raise GateFailed(
                "input_drift gate failed, nothing published: "
                + "; ".join(f"{r['name']} observed {format_value(r['observed'])} (required {r['bound']}: "
                            f"{r['meaning']})" for r in failed)
                + "; refit (produce without --model, or --set method.refit=on_drift)",
                failures=[{k: r[k] for k in ("name", "observed", "bound")} for r in failed])
    inputs = {"text": text_ref.fingerprint, "image": image_ref.fingerprint}
    semantic = semantic_config(settings)
    if all(embedding_input.values()):  # nothing to embed: the embed settings cannot change the result
        semantic = {section: value for section, value in semantic.items() if section != "embed"}
    method, params = settings.method.name, settings.method.params
    if frozen is not None:  # the model's checksum, method and parameters key the run, not the fit settings
        identity = model_identity(frozen.url, options)
        inputs["model"] = identity["sha256"]
        method, params = identity["method"], identity["params"]
        semantic = {**semantic, "method": {"name": method, "params": params}, "fit": None}
    key = run_key(inputs, semantic, code_version())
    logger.info("run key %s (dataset %s)", key, layout.dataset)
    lineage = run_lineage(
        {"text": {**input_record(text, text_ref.fingerprint, embedded=not embedding_input["text"]), "rows": text_ref.n_rows},
         "image": {**input_record(image, image_ref.fingerprint, embedded=not embedding_input["image"]),
                   "rows": image_ref.n_rows}},
        embed_model=settings.embed.model, method=method, params=params,
        config_hash=config_hash(settings), code_version=code_version(),
        text_store=text_store.removeprefix(layout.base).lstrip("/"), mode="fit" if frozen is None else "frozen-model",
    )
    if refit is not None:
        lineage["refit"] = refit
    if frozen is not None:
        lineage["model"] = {"ref": redact_url(frozen.ref), "version": frozen.entry.get("fitted_in") or frozen.version,
                            "from_version": frozen.version, "sha256": identity["sha256"]}
    record = {"run_key": key, "dataset": layout.dataset, "config": semantic, **lineage}
    write_json(layout.run_record(key), record, options)

    gate_settings = settings.gates
    if frozen is None:
        with _stage("statistics", timings):
            text_stats, image_stats = compute_statistics_together(
                [text_ref, image_ref], options, statistics_kind(settings.method.name))
        with _stage("fit", timings):
            model_url = fit_and_calibrate(layout.model(key), text_ref, image_ref, text_stats, image_stats, settings)
            save_drift_reference(model_url, samples, settings.gates, options)
        fitted_in, fitted_on = None, lineage["inputs"]
    else:
        with _stage("model", timings):
            model_url = layout.model(key)
            if not model_is_final(model_url, options):
                write_model_copy(frozen.url, model_url, options)
        fitted_in, fitted_on = lineage["model"]["version"], frozen.entry.get("fitted_on") or {}
        # the model's calibration is its fitting text's: new rows move the centroid by their noise
        gate_settings = settings.gates.model_copy(
            update={"centroid_residual_max": settings.gates.frozen_centroid_residual_max})
    subs_url = layout.substitutes(key)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aniso-gate-sample") as pool:
        # the gate samples and their metrics need only the model: computed while apply writes
        prepared = pool.submit(prepare_gate_sample, model_url, text_store, gate_settings, options, image_store,
                               output_dtype=settings.store.output_dtype, samples=samples)
        with _stage("apply", timings):
            apply_model(model_url, text_ref, subs_url, settings,
                        attrs={"run_key": key, "method": method, "config_hash": config_hash(settings)},
                        carry_from=_carry_source(frozen, layout, options))
        sample = _prepared(prepared)

    if frozen is not None:
        lineage["incremental"] = _carried(subs_url, frozen, options)
    rows = text_ref.n_rows
    # the stages so far, for the report the gate stage writes (this run's timings: a resumed run's are its own)
    write_json(layout.run_record(key), {**record, "stage_seconds": dict(timings)}, options)
    with _stage("gates"):
        # in the flow's own process, where preload_in_background has imported great-expectations
        gates = run_stage("gates", rows, lambda: gate(model_url, text_store, subs_url, layout.quality(key),
                                                      gate_settings, options, image_store_url=image_store,
                                                      sample=sample, run_key=key, run_record=layout.run_record(key),
                                                      earlier=drift))  # judged before apply: reported with the rest
    _gate_artifacts(key, gates, load_suites(settings.gates.suite_file).summary_metrics())
    if not gates["passed"]:
        failed = [{"name": r["name"], "observed": r["observed"], "bound": r["bound"]}
                  for r in gates["results"] if not r["passed"]]
        raise GateFailed(
            "gate(s) failed, nothing published: "
            + "; ".join(f"{r['name']} observed {format_value(r['observed'])} (required {r['bound']})" for r in failed)
            + (f"; report: {gates['report']['html']}" if (gates.get("report") or {}).get("html") else ""),
            failures=failed,
        )
    quality_html = (gates.get("report") or {}).get("html")
    with _stage("publish"):
        # the report goes into the version folder before its manifest (a version never changes after)
        pointer = run_stage("publish", rows, lambda: publish.submit(
            settings.storage.root, layout.dataset, key, gates, lineage, options,
            report_from=layout.quality(key) if quality_html else None, model_from=model_url,
            model_fitted_in=fitted_in, model_fitted_on=fitted_on, id_source=id_source).result())
    report_url = pointer.get("report")
    if report_url:
        create_link_artifact(link=_link(report_url), link_text=f"report of {layout.dataset} {pointer['version']}",
                             key="aniso-report", description=f"quality report of run {key}, in its published version")
    create_markdown_artifact(
        markdown=f"Published **{layout.dataset}** version `{pointer['version']}` (run `{key}`)"
                 + (f"; report: {_link(report_url)}" if report_url else "") + ".",
        key="aniso-published",
    )
    return {"run_key": key, "published": pointer, "gates": gates, "substitutes": subs_url, "model": model_url}


def _carry_source(frozen: ModelSource | None, layout: DatasetLayout, options: dict[str, Any]
                  ) -> tuple[str, dict[str, Any], str | None] | None:
    """``(data URL, manifest, run store URL)`` of the version a frozen model was taken from: the
    version whose unchanged shards the run carries over (None for a model given by URL). The run
    store (its shard markers hold the quality figures) may be gone: ``aniso gc`` removes runs."""
    if frozen is None or frozen.version is None:
        return None
    version_url = layout.published(frozen.version)
    manifest = read_json(join_url(version_url, "manifest.json"), options, "the manifest")
    run_key = manifest.get("run_key")
    # never a path the manifest names: inside the version, and the run folder of its key
    return join_url(version_url, DATA_PATH), manifest, layout.substitutes(run_key) if isinstance(run_key, str) else None


def _carried(subs_url: str, frozen: ModelSource, options: dict[str, Any]) -> dict[str, Any]:
    """The lineage's record of what a frozen-model run carried over and what it applied."""
    markers = EmbeddingStore.open(subs_url, storage_options=options).markers()
    carried = [m for m in markers if (m.get("stats") or {}).get("carried")]
    return {"from_version": frozen.version, "carried_shards": len(carried), "applied_shards": len(markers) - len(carried),
            "carried_rows": sum(m["rows"] for m in carried), "applied_rows": sum(m["rows"] for m in markers) - sum(m["rows"] for m in carried)}


def _prepared(future: Future[GateSample]) -> GateSample | None:
    """The gate sample prepared beside apply, or None when that failed: the gate stage then
    prepares it itself and raises the failure where it belongs."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - reported again, with its context, by the gate stage
        logger.warning("gate sample not prepared beside apply (%s); the gate stage prepares it", exc)
        return None


def _link(url: str) -> str:
    """The report's real URL for a Prefect link artifact: ``s3://bucket/key`` on object storage,
    ``file:///abs/path`` on a local root; any ``user:password@`` dropped."""
    link = redact_url(url)
    return link if "://" in link else "file://" + os.path.abspath(link)


def _gate_artifacts(key: str, gates: dict[str, Any], shown: list[str]) -> None:
    """Prefect artifacts of the gate stage: the gate table, a markdown summary, a link to the report.

    Everything shown comes from ``gates.json`` (names, numbers, bounds, report URL with any
    ``user:password@`` dropped), never from settings or storage options.
    """
    create_table_artifact(
        table=[{"gate": r["name"], "observed": str(r["observed"]), "bound": r["bound"],
                "passed": r["passed"]} for r in gates["results"]],
        key="aniso-gates", description=f"gates of run {key}",
    )
    metrics = gates.get("metrics", {})
    lines = [f"### Run `{key}`: gates {'passed' if gates['passed'] else '**FAILED**'}", ""]
    lines += [f"- {'✅' if r['passed'] else '❌'} `{r['name']}`: observed {format_value(r['observed'])} (required {r['bound']})"
              for r in gates["results"]]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {m} | {format_value(metrics[m])} |" for m in shown if m in metrics]
    lines += ["", f"gate stage: {gates.get('seconds', 0.0):.2f} s"]
    create_markdown_artifact(markdown="\n".join(lines), key="aniso-gate-summary", description=f"gate summary of run {key}")
    report = (gates.get("report") or {}).get("html")
    if report:
        link = _link(report)
        create_link_artifact(link=link, link_text=f"quality report of run {key}", key="aniso-report")
