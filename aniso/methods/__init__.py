"""Alignment methods behind one interface (see :mod:`aniso.methods.base`)."""

from .base import ALIGNERS, Aligner, available_aligners, get_aligner
from .anisoalign import AnisoAlign
from .baselines import C3, CentroidShift, Identity, MomentMatch, ReAlign

__all__ = [
    "ALIGNERS",
    "Aligner",
    "available_aligners",
    "get_aligner",
    "Identity",
    "CentroidShift",
    "ReAlign",
    "C3",
    "MomentMatch",
    "AnisoAlign",
]
