"""Alignment methods behind one interface (see :mod:`aniso.methods.base`)."""

from .base import ALIGNERS, Aligner, available_aligners, get_aligner
from .baselines import CentroidShift, Identity, ReAlign

__all__ = [
    "ALIGNERS",
    "Aligner",
    "available_aligners",
    "get_aligner",
    "Identity",
    "CentroidShift",
    "ReAlign",
]
