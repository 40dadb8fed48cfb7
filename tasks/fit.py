"""Fit tasks: the model, then the calibration pass (per shard) and its finish."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso.stages import fit as fit_stage

from ._retry import TASK_OPTIONS


@task(name="fit-model", **TASK_OPTIONS)
def fit_model(model_url: str, method: str, params: dict[str, Any], text_stats_url: str, image_stats_url: str,
              text_store_url: str, image_store_url: str, seed: int, sample_size: int | None,
              storage_options: dict[str, Any]) -> str:
    return fit_stage.fit_model(model_url, method, params, text_stats_url, image_stats_url, text_store_url,
                              image_store_url, seed=seed, sample_size=sample_size, storage_options=storage_options)


@task(name="calibration-shards", **TASK_OPTIONS)
def calibration_shards(model_url: str, text_store_url: str, shards: list[int], storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    return [fit_stage.calibration_shard(model_url, text_store_url, s, storage_options) for s in shards]


@task(name="finish-calibration", **TASK_OPTIONS)
def finish_calibration(model_url: str, partials: list[dict[str, Any]], storage_options: dict[str, Any]) -> str:
    return fit_stage.finish_calibration(model_url, partials, storage_options)
