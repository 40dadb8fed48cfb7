"""Alignment methods behind one interface (see :mod:`aniso.methods.base`).

The method classes are imported on first use (PEP 562), so ``import aniso.methods`` stays
numpy-only: AnisoAlign's training code (torch) loads only when AnisoAlign is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import ALIGNERS, METHOD_MODULES, Aligner, aligner_class, available_aligners, get_aligner

if TYPE_CHECKING:
    from .anisoalign import AnisoAlign
    from .baselines import C3, CentroidShift, Identity, MomentMatch, ReAlign

__all__ = [
    "ALIGNERS",
    "METHOD_MODULES",
    "Aligner",
    "aligner_class",
    "available_aligners",
    "get_aligner",
    "Identity",
    "CentroidShift",
    "ReAlign",
    "C3",
    "MomentMatch",
    "AnisoAlign",
]

_LAZY = {"Identity": ".baselines", "CentroidShift": ".baselines", "ReAlign": ".baselines", "C3": ".baselines",
         "MomentMatch": ".baselines", "AnisoAlign": ".anisoalign"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
