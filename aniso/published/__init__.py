"""Published versions: the atomic writer, the reader (``open_published``), chunk-aware batch
iteration and a torch ``IterableDataset``, exports for other tools, and retention (``aniso gc``).

The reader and writer are importable from here (what the flat layout had in one module); the
loaders, exports and retention from their modules.
"""

from __future__ import annotations

from aniso.published.dataset import (
    DATA_PATH,
    MANIFEST_FORMAT,
    REPORT_PATH,
    PublishedDataset,
    find_published,
    list_versions,
    open_published,
    read_latest,
    schema,
)
from aniso.published.writer import publish

__all__ = [
    "publish", "open_published", "PublishedDataset", "read_latest", "find_published", "list_versions",
    "MANIFEST_FORMAT", "DATA_PATH", "REPORT_PATH", "schema",
]
