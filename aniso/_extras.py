"""Optional dependencies: import them, or say which extra installs them.

The core install (``pip install "aniso[pipeline]"``) produces from precomputed embeddings with
the default method without torch. torch comes with the ``embed`` extra (open_clip, to embed raw
corpora) and the ``learned`` extra (the torch DataLoader of published data,
:mod:`aniso.published.torch_loader`; the name is kept from when it also installed AnisoAlign's
learned stages, since removed).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from aniso.errors import MissingExtra

__all__ = ["require"]


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """``import module``, or :class:`~aniso.errors.MissingExtra` naming ``extra`` and ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install \"aniso[{extra}]\""
        ) from exc
