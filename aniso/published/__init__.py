"""Published versions: the atomic writer, the reader (``open_published``), chunk-aware batch
iteration and a torch ``IterableDataset``, exports for other tools, and retention (``aniso gc``).

The reader and writer are importable from here (what the flat layout had in one module); the
loaders, exports and retention from their modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "publish": "aniso.published.writer",
    **dict.fromkeys(["open_published", "PublishedDataset", "read_latest", "find_published", "list_versions",
                     "MANIFEST_FORMAT", "DATA_PATH", "REPORT_PATH", "schema"], "aniso.published.dataset"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): ``import aniso.published.loader`` in a DataLoader worker stays light.
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
