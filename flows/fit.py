"""Fit stage: the aligner from the statistics (and samples), then the calibration pass."""

from __future__ import annotations

from prefect import flow

from aniso.config import Settings
from aniso.io.rows import StoreRef, describe, open_rows
from aniso.stages import fit as fit_stage
from aniso.tasks.fit import calibration_shards, finish_calibration, fit_model

from ._common import map_shards, run_stage


def fit_and_calibrate(model_url: str, text: StoreRef, image: StoreRef, text_stats: str, image_stats: str,
                      settings: Settings) -> str:
    """Fit (skipped when the model exists) and calibrate (skipped when μ̂ is stored)."""
    options = settings.storage.fs_options()
    if fit_stage.model_is_final(model_url, options):
        return model_url
    # the fit reads the statistics of every row of both inputs (plus a sample of them)
    run_stage(f"fit {settings.method.name}", text.n_rows + image.n_rows, lambda: fit_model.submit(
        model_url, settings.method.name, settings.method.params, text_stats, image_stats,
        text.url, image.url, settings.fit.seed, settings.fit.sample_size, options).result())
    partials = map_shards(calibration_shards, "calibrate", range(text.n_shards), rows=text.shard_sizes(),
                          batched=True, model_url=model_url, text_store_url=text.url, storage_options=options)
    return finish_calibration.submit(model_url, partials, options).result()


@flow(name="fit")
def fit(model_url: str, text_store: str, image_store: str, text_stats: str, image_stats: str, settings: Settings) -> str:
    """Standalone fit flow."""
    options = settings.storage.fs_options()
    text, image = (describe(open_rows(url, options)) for url in (text_store, image_store))
    return fit_and_calibrate(model_url, text, image, text_stats, image_stats, settings)
