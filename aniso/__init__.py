"""aniso: substitute image embeddings from text (AnisoAlign on a Zarr/Dask pipeline).

The stable, curated surface; everything else is reachable through its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aniso import _moved
from aniso._version import __version__
from aniso.errors import (
    AnisoError,
    ConfigError,
    GateFailed,
    InputError,
    NotFittedError,
    ShardAlignmentError,
    StoreCorrupt,
    StoreNotFound,
)
from aniso.methods.table import METHODS

if TYPE_CHECKING:
    from aniso.config import Settings, load_settings
    from aniso.io.store import EmbeddingStore
    from aniso.methods import Aligner, available_aligners, get_aligner
    from aniso.numeric.moments import Moments
    from aniso.published.dataset import PublishedDataset, open_published

# The rest of the surface loads on first use (PEP 562): ``import aniso`` costs numpy-free
# milliseconds, and neither it nor a worker applying a numpy method imports torch, zarr or pydantic
# before they are needed. Every method class of the method table is exported under its class name.
_LAZY = {
    "Settings": "aniso.config", "load_settings": "aniso.config",
    "Aligner": "aniso.methods", "available_aligners": "aniso.methods", "get_aligner": "aniso.methods",
    **{entry.class_name: "aniso.methods" for entry in METHODS.values()},
    "Moments": "aniso.numeric.moments", "PublishedDataset": "aniso.published.dataset",
    "open_published": "aniso.published.dataset", "EmbeddingStore": "aniso.io.store",
}

_moved.install()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "Settings",
    "load_settings",
    "AnisoError",
    "ConfigError",
    "GateFailed",
    "InputError",
    "NotFittedError",
    "ShardAlignmentError",
    "StoreCorrupt",
    "StoreNotFound",
    "Aligner",
    *(entry.class_name for entry in METHODS.values()),
    "available_aligners",
    "get_aligner",
    "Moments",
    "EmbeddingStore",
    "PublishedDataset",
    "open_published",
]

