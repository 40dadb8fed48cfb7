"""Guard rails of publication: a new version must read like the one ``LATEST`` names.

A training team pins a dataset and reads every new version the same way: a version whose
embedding dimension, dtype or id source (ids from the input vs row numbers) differs from the
dataset's ``LATEST`` would break it silently. :func:`check_schema` refuses such a run before any
heavy work, with one line naming both sides, unless ``publish.allow_schema_change`` is set.
"""

from __future__ import annotations

import logging
from typing import Any

from aniso._fs import join_url
from aniso.errors import SchemaChanged
from aniso.io.layout import DatasetLayout

__all__ = ["check_schema", "schema_of"]

logger = logging.getLogger(__name__)


def schema_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """``{"dim", "dtype", "id_source"}`` of a published manifest (``id_source`` None when the
    version predates the field)."""
    arrays = manifest.get("arrays") if isinstance(manifest.get("arrays"), dict) else {}
    emb = arrays.get("embedding") if isinstance(arrays.get("embedding"), dict) else {}
    return {"dim": manifest.get("dim"), "dtype": emb.get("dtype"), "id_source": manifest.get("id_source")}


def check_schema(layout: DatasetLayout, *, dim: int, dtype: str, id_source: str, allow: bool,
                 storage_options: dict[str, Any]) -> None:
    """Refuse a run whose output would differ in schema from the dataset's ``LATEST`` version.

    Raises
    ------
    SchemaChanged
        (exit 2) naming each difference, the version, and the setting that allows it.
    """
    from aniso.published.dataset import read_json, read_latest

    pointer = read_latest(layout, storage_options)
    if pointer is None:
        return
    manifest = read_json(join_url(layout.published(pointer["version"]), "manifest.json"), storage_options,
                         "the manifest")
    old = schema_of(manifest if isinstance(manifest, dict) else {})
    new = {"dim": dim, "dtype": dtype, "id_source": id_source}
    changed = [f"{k} {old[k]} -> {new[k]}" for k in ("dim", "dtype", "id_source")
               if old[k] is not None and old[k] != new[k]]
    if not changed:
        return
    what = ", ".join(changed)
    if allow:
        logger.warning("dataset %s changes schema (%s) from version %s: publish.allow_schema_change is set",
                       layout.dataset, what, pointer["version"])
        return
    raise SchemaChanged(f"refusing to replace dataset {layout.dataset!r} (LATEST {pointer['version']}): the new "
                        f"version would change {what}; publish it under another --dataset, or set "
                        "publish.allow_schema_change=true")


#: Where ``aniso demo`` (and the default profile) writes, and the dataset it publishes.
DEMO_ROOT, DEMO_DATASET = ".aniso-demo", "demo"


def refuse_demo_replacement(text: str, root: str, dataset: str, *, dataset_given: bool) -> None:
    """Refuse a ``produce`` that would publish other inputs into the demo dataset.

    A run given no ``--dataset`` whose settings name the demo root and dataset, over inputs that
    are not the demo's generated corpus (``<root>/corpus/``), would replace the demo's ``LATEST``.

    Raises
    ------
    ConfigError
        (exit 2) naming the demo dataset and the fix.
    """
    import os

    from aniso.errors import ConfigError

    if dataset_given or dataset != DEMO_DATASET or "://" in root:
        return
    if os.path.abspath(root) != os.path.abspath(DEMO_ROOT):
        return
    corpus = os.path.join(os.path.abspath(root), "corpus") + os.sep
    if "://" not in text and os.path.abspath(text).startswith(corpus):
        return
    raise ConfigError(f"refusing to replace the demo dataset {DEMO_DATASET!r} under {root} with {text}: give "
                      "--dataset NAME (and --out ROOT) for your own data")
