"""Saving and loading fitted aligners (:meth:`aniso.methods.Aligner.save` / ``load``): a model
folder holds ``state-<sha256>.npz`` (the arrays, named by their content) and one JSON that commits
it (``aligner.json``, or ``uncalibrated.json`` for a model awaiting its calibration)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from aniso._fs import exists, filesystem, join_url, write_atomic
from aniso._version import __version__
from aniso.errors import ConfigError, StoreCorrupt, StoreNotFound
from aniso.methods.table import METHODS
from aniso.numeric.fused_affine import APPLY_KERNELS

if TYPE_CHECKING:
    from aniso.methods.base import Aligner

__all__ = ["MODEL_JSON", "UNCALIBRATED_JSON", "save_model", "load_model", "saved_model"]

logger = logging.getLogger(__name__)

#: The commit marker of a complete model, and of one still waiting for its calibration.
MODEL_JSON = "aligner.json"
UNCALIBRATED_JSON = "uncalibrated.json"
#: The state file of models saved before saves were atomic (later ones name theirs in the JSON).
_LEGACY_STATE_NPZ = "state.npz"


def save_model(aligner: Aligner, url: str, storage_options: dict[str, Any] | None = None) -> str:
    """:meth:`aniso.methods.Aligner.save` (its docstring says how the write is made atomic)."""
    state = aligner.get_state()
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    state_name = f"state-{digest[:16]}.npz"
    meta = {
        "name": aligner.name,
        "params": aligner.get_params(),
        "apply_kernel": aligner.apply_kernel,
        "arrays": sorted(state),
        "aniso_version": __version__,
        "state": state_name,
        "state_sha256": digest,
    }
    write_atomic(join_url(url, state_name), payload, storage_options)
    marker = MODEL_JSON if aligner.fitted else UNCALIBRATED_JSON
    write_atomic(join_url(url, marker), json.dumps(meta, indent=2, sort_keys=True), storage_options)
    return url


def load_model(url: str, storage_options: dict[str, Any] | None, expected: type[Aligner] | None) -> Aligner:
    """:meth:`aniso.methods.Aligner.load`: the complete model, else one awaiting calibration.

    Raises
    ------
    StoreNotFound
        No model was committed at ``url``.
    StoreCorrupt
        The committed model is unreadable, or not an ``expected`` (None: any method), or holds
        what this aniso cannot apply (AnisoAlign's learned stages).
    ConfigError
        Its parameters are ones this aniso refuses (AnisoAlign with ``learned: true``).
    """
    for marker in (MODEL_JSON, UNCALIBRATED_JSON):
        if exists(join_url(url, marker), storage_options):
            return _load_marker(url, marker, storage_options, expected)
    raise StoreNotFound(f"no saved aligner at {url}")


def saved_model(url: str, storage_options: dict[str, Any] | None, expected: type[Aligner] | None) -> Aligner | None:
    """:meth:`aniso.methods.Aligner.saved`: the most advanced readable model, or None (a damaged
    one is logged and counts as absent)."""
    for marker in (MODEL_JSON, UNCALIBRATED_JSON):
        try:
            return _load_marker(url, marker, storage_options, expected)
        except StoreNotFound:
            continue
        except StoreCorrupt as exc:
            logger.warning("ignoring a damaged model (it is written again): %s", exc)
    return None


def _load_marker(url: str, marker: str, storage_options: dict[str, Any] | None,
                 expected: type[Aligner] | None) -> Aligner:
    """The model ``marker`` commits at ``url``; ``expected``: the class it must be (None: any)."""
    try:
        meta = json.loads(_read_whole(join_url(url, marker), storage_options))
        # models saved before the atomic layout name no state file: theirs is state.npz
        state_name = meta.get("state", _LEGACY_STATE_NPZ) if isinstance(meta, dict) else _LEGACY_STATE_NPZ
        raw = _read_whole(join_url(url, state_name), storage_options)
    except FileNotFoundError as exc:
        raise StoreNotFound(f"no saved aligner at {url}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSON of a torn write
        raise StoreCorrupt(f"aligner at {url}: {marker} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("params"), dict):
        raise StoreCorrupt(f"aligner at {url}: {marker} does not describe a model")
    if "state_sha256" in meta and hashlib.sha256(raw).hexdigest() != meta["state_sha256"]:
        raise StoreCorrupt(f"aligner state at {url} ({state_name}) does not match its checksum in {marker}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
    except Exception as exc:  # a truncated/corrupted npz raises several types
        raise StoreCorrupt(f"aligner state at {url} is unreadable: {exc}") from exc
    entry = METHODS.get(meta.get("name", ""))
    aligner_cls = entry.load() if entry is not None else None
    if aligner_cls is None:
        raise StoreCorrupt(f"aligner at {url} names unknown method {meta.get('name')!r}")
    if expected is not None and not issubclass(aligner_cls, expected):
        raise StoreCorrupt(f"aligner at {url} is a {aligner_cls.__name__}, not a {expected.__name__}")
    missing = set(meta.get("arrays", [])) - set(state)
    if missing or not {"mu_text", "mu_image"} <= set(state):
        raise StoreCorrupt(f"aligner state at {url} lacks arrays {sorted(missing or {'mu_text', 'mu_image'})}")
    # models saved before the kernel was recorded apply with the float64 map they were made with
    kernel = meta.get("apply_kernel", "float64-rows")
    if kernel not in APPLY_KERNELS:
        raise StoreCorrupt(f"aligner at {url} applies with kernel {kernel!r}, which this aniso does not have "
                           f"(it has {', '.join(APPLY_KERNELS)}): a newer aniso saved it")
    try:  # parameters this aniso no longer takes (e.g. AnisoAlign's learned stages) are refused here
        obj = aligner_cls(**meta["params"])
    except ConfigError as exc:
        raise ConfigError(f"aligner at {url}: {exc}") from None
    obj.apply_kernel = kernel
    obj.mu_text = state["mu_text"]
    obj.mu_image = state["mu_image"]
    obj.mu_hat = state.get("mu_hat")
    obj.dim = int(obj.mu_image.shape[0])
    try:
        obj._set_state(state)
    except StoreCorrupt as exc:
        raise StoreCorrupt(f"aligner at {url}: {exc}") from None
    return obj


def _read_whole(url: str, storage_options: dict[str, Any] | None) -> bytes:
    """One object in one GET: a file object on S3 reads in ranges pinned to the first ETag and
    fails ("PreconditionFailed") when a concurrent save replaces the object between them."""
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)
