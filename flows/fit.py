"""Fit stage: the aligner from the statistics (and samples), then the calibration pass."""

from __future__ import annotations

from prefect import flow

from aniso.stages import fit as fit_stage
from aniso.config import Settings
from aniso.io.npy_view import open_rows
from aniso.tasks.fit import calibration_shards, finish_calibration, fit_model

from ._common import map_shards, run_stage, store_shard_rows


def fit_and_calibrate(model_url: str, text_store: str, image_store: str, text_stats: str, image_stats: str,
                      settings: Settings) -> str:
    """Fit (skipped when the model exists) and calibrate (skipped when μ̂ is stored)."""
    options = settings.storage.fs_options()
    if fit_stage.model_is_final(model_url, options):
        return model_url
    text_rows = open_rows(text_store, options).n_rows
    image_rows = open_rows(image_store, options).n_rows
    # the fit reads the statistics of every row of both inputs (plus a sample of them)
    run_stage(f"fit {settings.method.name}", text_rows + image_rows, lambda: fit_model.submit(
        model_url, settings.method.name, settings.method.params, text_stats, image_stats,
        text_store, image_store, settings.fit.seed, settings.fit.sample_size, options).result())
    n_shards = open_rows(text_store, options).n_shards
    partials = map_shards(calibration_shards, "calibrate", range(n_shards), rows=store_shard_rows(text_store, options),
                          batched=True, model_url=model_url, text_store_url=text_store, storage_options=options)
    return finish_calibration.submit(model_url, partials, options).result()


@flow(name="fit")
def fit(model_url: str, text_store: str, image_store: str, text_stats: str, image_stats: str, settings: Settings) -> str:
    """Standalone fit flow."""
    return fit_and_calibrate(model_url, text_store, image_store, text_stats, image_stats, settings)
