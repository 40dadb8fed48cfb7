"""The whole job: ingest → statistics → fit → calibrate → apply → gate → publish.

Every stage skips work already completed for the run key (inputs + semantic config + code
version), so a rerun after a crash anywhere resumes and produces identical output.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from aniso._version import code_version
from aniso.config import Settings, config_hash, semantic_config
from aniso.errors import GateFailed, InputError
from aniso.layout import DatasetLayout, run_key
from aniso.pipeline import write_json
from aniso.store import EmbeddingStore
from tasks.gate import gate
from tasks.publish import publish

from .apply import apply_model
from .fit import fit_and_calibrate
from .ingest import ingest_embeddings
from .stats import compute_statistics

logger = logging.getLogger(__name__)


@flow(name="produce", flow_run_name="produce-{settings.storage.dataset}", validate_parameters=False)
def produce(text: str, image: str, settings: Settings) -> dict[str, Any]:
    """Produce and publish substitute image embeddings for a text corpus.

    Parameters
    ----------
    text, image
        Embedding inputs: a ``.npy`` file, a clip-retrieval folder or an aniso Zarr store.
    settings
        The resolved settings tree (``aniso.config.load_settings``).

    Returns
    -------
    dict
        ``run_key``, ``published`` (the LATEST pointer), ``gates`` and the store URLs.

    Raises
    ------
    GateFailed
        When any gate fails; nothing is published and the run's staging data stays.
    """
    options = settings.storage.fs_options()
    layout = DatasetLayout(settings.storage.root, settings.storage.dataset)
    text_store, text_fp = ingest_embeddings(text, "text", layout, settings)
    image_store, image_fp = ingest_embeddings(image, "image", layout, settings)
    text_dim = EmbeddingStore.open(text_store, storage_options=options).dim
    image_dim = EmbeddingStore.open(image_store, storage_options=options).dim
    if text_dim != image_dim:
        raise InputError(f"text embeddings ({text}) have d={text_dim} but image embeddings ({image}) have d={image_dim}")

    key = run_key({"text": text_fp, "image": image_fp}, semantic_config(settings), code_version())
    logger.info("run key %s (dataset %s)", key, layout.dataset)
    lineage = {
        "method": settings.method.name, "params": settings.method.params, "config_hash": config_hash(settings),
        "code_version": code_version(), "embed_model": settings.embed.model,
        "inputs": {"text": {"fingerprint": text_fp}, "image": {"fingerprint": image_fp}},
        "text_store": text_store.removeprefix(layout.base).lstrip("/"),
    }
    write_json(f"{layout.run(key)}/run.json", {"run_key": key, "config": semantic_config(settings), **lineage}, options)

    text_stats = compute_statistics(text_store, options)
    image_stats = compute_statistics(image_store, options)
    model_url = fit_and_calibrate(layout.model(key), text_store, image_store, text_stats, image_stats, settings)
    subs_url = layout.substitutes(key)
    apply_model(model_url, text_store, subs_url, settings,
                attrs={"run_key": key, "method": settings.method.name, "config_hash": config_hash(settings)})

    gates = gate.submit(model_url, text_store, subs_url, layout.quality(key), settings.gates, options).result()
    create_table_artifact(
        table=[{"gate": r["name"], "observed": str(r["observed"]), "bound": r["bound"], "passed": r["passed"]}
               for r in gates["results"]],
        key="aniso-gates", description=f"gates of run {key}",
    )
    if not gates["passed"]:
        failed = [r for r in gates["results"] if not r["passed"]]
        raise GateFailed(
            "gate(s) failed, nothing published: "
            + "; ".join(f"{r['name']} observed {r['observed']} (required {r['bound']})" for r in failed),
            failures=failed,
        )
    pointer = publish.submit(settings.storage.root, layout.dataset, key, gates, lineage, options).result()
    create_markdown_artifact(
        markdown=f"Published **{layout.dataset}** version `{pointer['version']}` (run `{key}`).",
        key="aniso-published",
    )
    return {"run_key": key, "published": pointer, "gates": gates, "substitutes": subs_url, "model": model_url}
