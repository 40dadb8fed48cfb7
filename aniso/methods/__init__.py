"""Alignment methods behind one interface (see :mod:`aniso.methods.base`).

Every method is a row of :data:`aniso.methods.table.METHODS`; its class is imported on first use
(PEP 562), so ``import aniso.methods`` (and the settings, which read the table and the parameter
models) never imports numpy-heavy or torch code: AnisoAlign's training code loads only when
AnisoAlign is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from aniso.methods.table import METHODS, MethodEntry

_BASE = ("Aligner", "aligner_class", "available_aligners", "get_aligner")

__all__ = ["METHODS", "MethodEntry", *_BASE, *(entry.class_name for entry in METHODS.values())]


def __getattr__(name: str) -> Any:
    if name in _BASE:
        value = getattr(importlib.import_module("aniso.methods.base"), name)
    else:
        entry = next((e for e in METHODS.values() if e.class_name == name), None)
        if entry is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = entry.load()
    globals()[name] = value
    return value
