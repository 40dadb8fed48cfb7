"""Package version and code version (a hash of the code's source: part of every run key)."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

__version__ = "0.1.0"

#: Subpackages that live outside ``aniso/`` in the source tree (``flows/``, ``tasks/``) and
#: inside it in a wheel (``aniso/flows``, ``aniso/tasks``): hashed under these names either way.
_MAPPED = ("flows", "tasks")


def _sources() -> Iterator[tuple[str, Path]]:
    """``(name, path)`` of every ``.py`` file of the code, named as installed from a wheel.

    Editable installs map ``aniso.flows``/``aniso.tasks`` to the repository's top-level folders,
    wheels install them under ``aniso/``; each is located through the import system (without
    importing it), so both install modes hash the same files under the same names.
    """
    package = Path(__file__).resolve().parent
    for path in package.rglob("*.py"):
        name = path.relative_to(package).as_posix()
        if name.split("/", 1)[0] not in _MAPPED:
            yield name, path
    for sub in _MAPPED:
        try:
            spec = importlib.util.find_spec(f"aniso.{sub}")
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            root = Path(location).resolve()
            for path in root.rglob("*.py"):
                yield f"{sub}/{path.relative_to(root).as_posix()}", path
            break


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<version>+<hash of the code>``: any change to the library, its flows or tasks is a new run.

    The hash covers the source of ``aniso/**/*.py`` and of the ``aniso.flows`` and
    ``aniso.tasks`` packages, by their installed names, and nothing else (no paths, times or
    bytecode): the same source gives the same code version installed editable or from a wheel.
    """
    digest = hashlib.sha256()
    for name, path in sorted(_sources()):
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
