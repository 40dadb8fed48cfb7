"""aniso: substitute image embeddings from text (AnisoAlign on a Zarr/Dask pipeline).

The stable, curated surface; everything else is reachable through its module.
"""

from __future__ import annotations

from ._version import __version__
from .config import Settings, load_settings
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

