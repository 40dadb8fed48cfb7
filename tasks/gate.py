"""Gate task: evaluate the quality gates of a run."""

from __future__ import annotations

from typing import Any

from prefect import task

from aniso.config import GateSettings
from aniso.stages import gate as gate_stage

from ._retry import TASK_OPTIONS


@task(name="gate", **TASK_OPTIONS)
def gate(model_url: str, text_store_url: str, subs_url: str, quality_url: str, settings: GateSettings,
         storage_options: dict[str, Any], image_store_url: str | None = None,
         sample: gate_stage.GateSample | None = None, run_key: str | None = None,
         run_record: str | None = None, earlier: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return gate_stage.gate_run(model_url, text_store_url, subs_url, quality_url, settings, storage_options,
                               image_store_url=image_store_url, sample=sample, run_key=run_key, run_record=run_record,
                               earlier=earlier)
