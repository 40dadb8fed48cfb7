"""The fitted model as part of a published version, and frozen-model references.

Every version publishes the model that made it (``docs/format.md``, *The model*)::

    published/<version>/model/aligner.json          method, parameters, the state file's sha256
    published/<version>/model/state-<digest>.npz    the fitted arrays (numpy only, no pickle)

and its manifest names it (``manifest["model"]``): the files with their sha256, the method and
its parameters, the version it was fitted in and the inputs it was fitted on (fingerprints and
row counts). ``aniso produce --model REF`` applies such a model instead of fitting one; REF is
``latest``, a published version of the same dataset, or a model folder URL
(:func:`resolve_model`).

A model is copied like the data it belongs to: hard links locally (:meth:`Aligner.save` replaces
files whole, never in place), server-side copies on object storage, so each version stays
self-contained and removing one version never takes another's model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aniso._fs import exists, filesystem, join_url, link_or_copy, write_atomic
from aniso.errors import ConfigError, StoreCorrupt, StoreNotFound
from aniso.io.layout import DatasetLayout
from aniso.methods.persistence import MODEL_JSON as _MODEL_JSON
from aniso.published.model_check import MODEL_PATH, model_problems

__all__ = ["MODEL_PATH", "ModelSource", "resolve_model", "model_files", "copy_model", "model_entry", "model_problems"]

logger = logging.getLogger(__name__)

_REFERENCE = "reference.npz"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: where the model is and what published it."""

    #: the model folder (``aligner.json`` + its state file)
    url: str
    #: what the reference said (``latest``, a version, a URL)
    ref: str
    #: the published version whose model this is (None for a bare model URL)
    version: str | None = None
    #: that version's manifest ``model`` entry (None for a bare model URL)
    entry: dict[str, Any] = field(default_factory=dict)


def model_files(model_url: str, storage_options: dict[str, Any]) -> dict[str, bytes]:
    """The committed model's files (``aligner.json``, the state file it names and the drift
    reference ``reference.npz`` when there is one), read whole.

    Raises
    ------
    StoreNotFound
        No complete (calibrated) model is committed at ``model_url``.
    StoreCorrupt
        ``aligner.json`` is unreadable or names no state file.
    """
    fs, path = filesystem(model_url, storage_options)
    try:
        meta_bytes = fs.cat_file(join_url(path, _MODEL_JSON))
    except FileNotFoundError:
        raise StoreNotFound(f"no complete model at {model_url} (no {_MODEL_JSON})") from None
    try:
        state = json.loads(meta_bytes)["state"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreCorrupt(f"model {model_url}: {_MODEL_JSON} names no state file ({exc})") from exc
    try:
        files = {_MODEL_JSON: meta_bytes, state: fs.cat_file(join_url(path, state))}
    except FileNotFoundError:
        raise StoreCorrupt(f"model {model_url}: its state file {state} is missing") from None
    try:  # the input-drift reference of the fit (aniso.quality.drift), when the run saved one
        files[_REFERENCE] = fs.cat_file(join_url(path, _REFERENCE))
    except FileNotFoundError:
        pass
    return files


def copy_model(src_url: str, dst_url: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """Copy the committed model at ``src_url`` into the folder ``dst_url``; ``{file: sha256}``.

    Local: hard links (a copy across devices); object storage: server-side copies. The state
    file goes first and ``aligner.json`` last, so a half-done copy is no model at all.
    """
    files = model_files(src_url, storage_options)
    fs, src = filesystem(src_url, storage_options)
    _, dst = filesystem(dst_url, storage_options)
    order = [n for n in files if n != _MODEL_JSON] + [_MODEL_JSON]
    for name in order:
        link_or_copy(fs, join_url(src, name), join_url(dst, name))
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def _stored_params(files: dict[str, bytes]) -> tuple[str, dict[str, Any], str]:
    meta = json.loads(files[_MODEL_JSON])
    return str(meta.get("name")), dict(meta.get("params") or {}), str(meta.get("state_sha256", ""))


def model_entry(files: dict[str, str], model_url: str, storage_options: dict[str, Any], *,
                fitted_in: str, fitted_on: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``model`` entry of a version whose model folder is ``model_url``."""
    name, params, state_sha = _stored_params(model_files(model_url, storage_options))
    return {"path": MODEL_PATH, "method": name, "params": params, "sha256": state_sha,
            "files": dict(sorted(files.items())), "fitted_in": fitted_in, "fitted_on": fitted_on}


def model_identity(model_url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """What keys a frozen-model run: the method, its parameters and the state's sha256."""
    name, params, state_sha = _stored_params(model_files(model_url, storage_options))
    return {"method": name, "params": params, "sha256": state_sha}


def resolve_model(ref: str, layout: DatasetLayout, storage_options: dict[str, Any]) -> ModelSource:
    """The model ``ref`` names: ``latest``, a version of ``layout``'s dataset, or a model URL.

    Raises
    ------
    ConfigError
        Nothing is published (``latest``), the version holds no model (published before
        versions carried theirs), or no complete model is at the URL; the message names the fix.
    """
    from aniso.published.dataset import list_versions, read_json, read_latest

    ref = ref.strip()
    version: str | None = None
    if ref == "latest":
        pointer = read_latest(layout, storage_options)
        if pointer is None:
            raise ConfigError(f"--model latest: nothing is published in {layout.base} yet; run produce without "
                              "--model once to fit and publish a model")
        version = pointer["version"]
    elif "/" not in ref and ":" not in ref and ref in list_versions(layout, storage_options):
        version = ref
    if version is not None:
        manifest = read_json(join_url(layout.published(version), "manifest.json"), storage_options, "the manifest")
        entry = manifest.get("model") if isinstance(manifest, dict) else None
        if not isinstance(entry, dict):
            raise ConfigError(f"--model {ref}: version {version} of {layout.dataset} holds no model (published "
                              "before versions carried their model); run produce without --model to fit one")
        if entry.get("path") != MODEL_PATH:  # never a path out of the version folder
            raise StoreCorrupt(f"version {version} of {layout.dataset}: its manifest's model path is "
                               f"{entry.get('path')!r}, not {MODEL_PATH!r}")
        url = join_url(layout.published(version), MODEL_PATH)
        return ModelSource(url, ref, version, entry)
    if "/" not in ref and not exists(ref, storage_options):
        raise ConfigError(f"--model {ref!r} is not 'latest', a published version of {layout.dataset} nor a model "
                          "folder URL")
    try:
        model_files(ref, storage_options)
    except (StoreNotFound, StoreCorrupt) as exc:
        raise ConfigError(f"--model {ref}: {exc}") from None
    return ModelSource(ref, ref, None, {})


def write_model_copy(src_url: str, dst_url: str, storage_options: dict[str, Any]) -> None:
    """Copy a model into a run's own model folder (byte for byte, state first, whole objects).

    Unlike :func:`copy_model` it reads and writes the bytes, so the source may be on another
    filesystem than the run (a ``--model`` URL outside the storage root).
    """
    files = model_files(src_url, storage_options)
    for name in [n for n in files if n != _MODEL_JSON] + [_MODEL_JSON]:
        write_atomic(join_url(dst_url, name), files[name], storage_options)
