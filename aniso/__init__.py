"""aniso: substitute image embeddings from text (AnisoAlign on a Zarr/Dask pipeline).

The stable, curated surface; everything else is reachable through its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AnisoError,
    ConfigError,
    GateFailed,
    InputError,
    NotFittedError,
    ShardAlignmentError,
    StoreCorrupt,
    StoreNotFound,
)

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .methods import (
        C3,
        Aligner,
        AnisoAlign,
        CentroidShift,
        Identity,
        MomentMatch,
        ReAlign,
        available_aligners,
        get_aligner,
    )
    from .moments import Moments
    from .publish import PublishedDataset, open_published
    from .store import EmbeddingStore

# The rest of the surface loads on first use (PEP 562): ``import aniso`` costs numpy-free
# milliseconds, and neither it nor a worker applying a numpy method imports torch, zarr or pydantic
# before they are needed.
_LAZY = {
    "Settings": ".config", "load_settings": ".config",
    "Aligner": ".methods", "AnisoAlign": ".methods", "C3": ".methods", "CentroidShift": ".methods",
    "Identity": ".methods", "MomentMatch": ".methods", "ReAlign": ".methods",
    "available_aligners": ".methods", "get_aligner": ".methods",
    "Moments": ".moments", "PublishedDataset": ".publish", "open_published": ".publish",
    "EmbeddingStore": ".store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
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
    "AnisoAlign",
    "C3",
    "CentroidShift",
    "Identity",
    "MomentMatch",
    "ReAlign",
    "available_aligners",
    "get_aligner",
    "Moments",
    "EmbeddingStore",
    "PublishedDataset",
    "open_published",
]

