"""The model files of a published version against the sha256 its manifest lists (``aniso verify``).

Kept apart from :mod:`aniso.published.model` (which resolves references through the dataset
reader), so the reader can check a version's model without an import cycle.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aniso._fs import filesystem, join_url

__all__ = ["MODEL_PATH", "model_problems"]

#: Where a version's model lives, relative to ``published/<version>/``.
MODEL_PATH = "model"


def model_problems(manifest: dict[str, Any], version_url: str, storage_options: dict[str, Any]) -> list[str]:
    """The version's model files against the manifest's sha256 (empty: intact or no model)."""
    entry = manifest.get("model")
    if entry is None:
        return []
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict) or entry.get("path") != MODEL_PATH:
        return [f"manifest 'model' entry is malformed: {entry!r}"]
    fs, path = filesystem(join_url(version_url, MODEL_PATH), storage_options)
    found = []
    for name, digest in sorted(entry["files"].items()):
        if "/" in name or name.startswith("."):
            found.append(f"model file name {name!r} is not a plain file name")
            continue
        try:
            data = fs.cat_file(join_url(path, name))
        except FileNotFoundError:
            found.append(f"model file {MODEL_PATH}/{name} is missing")
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            found.append(f"model file {MODEL_PATH}/{name} does not match its sha256 in the manifest")
    return found
