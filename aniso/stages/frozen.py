"""Checks and set-up of a run that applies a frozen model (``aniso produce --model REF``).

A frozen-model run has no statistics or fit stage: it copies the referenced model into its own
run folder and applies it. Its substitutes are bit-identical, row for row, to those of every
other version made with the same model, whatever the new input's shard layout or row order
(the transforms are row-deterministic: :mod:`aniso.numeric.rowwise`). Ids are the join key
between such versions, so an input without ids is refused unless row numbers are declared to be
the ids (``corpus.embedding_ids=row-number``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aniso.errors import ConfigError, InputError, StoreCorrupt
from aniso.io.inputs import ROW_NUMBER, input_form, open_embedding_source
from aniso.io.layout import DatasetLayout

if TYPE_CHECKING:
    from aniso.stages.gate import Samples

__all__ = ["input_id_source", "check_frozen_ids", "check_before_run", "save_drift_reference", "input_drift"]


def input_id_source(url: str, storage_options: dict[str, Any], ids: str = "auto") -> str:
    """``"row-number"`` when the input's ids are its row numbers (a bare ``.npy``, a
    clip-retrieval folder without metadata, or ``corpus.embedding_ids=row-number``), else
    ``"input"`` (metadata ids, an aniso store's ids, a raw corpus's ids)."""
    if ids == ROW_NUMBER:
        return ROW_NUMBER
    if input_form(url, storage_options).kind != "npy":
        return "input"
    source = open_embedding_source(url, storage_options, what="text input", ids=ids)
    return "input" if all(part.id_column for part in source.parts) else ROW_NUMBER


def check_frozen_ids(url: str, id_source: str, ids_setting: str) -> None:
    """Refuse a ``--model`` run over an input whose ids are row numbers nobody asked for.

    Raises
    ------
    InputError
        (exit 2) naming the input and both fixes.
    """
    if id_source == ROW_NUMBER and ids_setting != ROW_NUMBER:
        raise InputError(
            f"text input {url} has no ids (a bare .npy: rows would be joined across versions by position); "
            "--model runs join rows on ids: give a clip-retrieval folder with metadata/metadata_<i>.parquet "
            f"holding an id column, or set corpus.embedding_ids={ROW_NUMBER} if row numbers are the ids")


def check_before_run(text: str, text_dim: int | None, settings: Any, storage_options: dict[str, Any]) -> str:
    """The checks :func:`aniso.stages.preflight.preflight` makes for publication; returns the
    text input's id source.

    * ``method.model`` set: the model reference resolves to a model this aniso can apply (not
      one of AnisoAlign's removed learned stages) and the text input has ids;
    * the new version would keep ``LATEST``'s dimension, dtype and id source
      (:func:`aniso.published.guard.check_schema`), when the dimension is known from headers.
    """
    from aniso.methods import Aligner
    from aniso.published.guard import check_schema
    from aniso.published.model import resolve_model

    layout = DatasetLayout(settings.storage.root, settings.storage.dataset)
    id_source = input_id_source(text, storage_options, settings.corpus.embedding_ids) \
        if input_form(text, storage_options).kind != "corpus" else "input"
    if settings.method.model:
        check_frozen_ids(text, id_source, settings.corpus.embedding_ids)
        source = resolve_model(settings.method.model, layout, storage_options)
        try:  # a model this aniso refuses fails here, before any work, not in the apply stage
            Aligner.load(source.url, storage_options)
        except (ConfigError, StoreCorrupt) as exc:
            raise ConfigError(f"--model {settings.method.model}: {exc}") from None
    if text_dim is not None:
        check_schema(layout, dim=text_dim, dtype=settings.store.output_dtype, id_source=id_source,
                     allow=settings.publish.allow_schema_change, storage_options=storage_options)
    return id_source


def save_drift_reference(model_url: str, samples: Samples, gates: Any,
                         storage_options: dict[str, Any]) -> None:
    """Save the fit's drift reference beside its model (skipped when a rerun finds it saved).

    ``samples``: the gate's samples of the fitting inputs (:func:`aniso.stages.gate.draw_samples`),
    the rows the drift gate of a later frozen-model run compares with its own.
    """
    from aniso.quality.drift import load_drift_bounds, load_reference, reference_from, save_reference

    if load_reference(model_url, storage_options) is not None:
        return
    _, text, image = samples
    k = int(load_drift_bounds(gates.suite_file)["top_k"])
    save_reference(model_url, reference_from(text, image, k), storage_options)


def input_drift(model_url: str, samples: Samples, gates: Any,
                storage_options: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``input_drift`` gate results of new inputs against a frozen model's reference; None
    when the model has no reference (fitted before references were saved): logged, not judged.

    ``samples``: the gate's samples of the new inputs (:func:`aniso.stages.gate.draw_samples`).
    """
    import logging

    from aniso.methods import Aligner
    from aniso.quality.drift import drift_metrics, judge_drift, load_drift_bounds, load_reference

    reference = load_reference(model_url, storage_options)
    if reference is None:
        logging.getLogger(__name__).warning("model %s has no drift reference: the input_drift gate is skipped", model_url)
        return None
    aligner = Aligner.load(model_url, storage_options)
    _, text, image = samples
    metrics = drift_metrics(reference, aligner.mu_text, aligner.mu_image, text, image)
    return judge_drift(metrics, load_drift_bounds(gates.suite_file))
