"""Import paths of modules that moved when the package was grouped by role (0.x → folders).

``import aniso.torch_loader`` (the path the README showed) and every other pre-move module path
keep working: a finder on ``sys.meta_path`` answers for the old name with the module at its new
place (the same module object, so ``isinstance`` checks and monkeypatching see one module).
Nothing inside aniso uses these names (``tests/test_layout.py`` checks); they exist for code
written against the old layout.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "install"]

#: old module path -> new module path. ``aniso.publish`` was split in two: its names are
#: re-exported together by :mod:`aniso.published`. (``aniso.pipeline``, split into
#: :mod:`aniso.stages`, was internal to the tasks and has no alias.)
MOVED: dict[str, str] = {
    "aniso.affine": "aniso.numeric.fused_affine",
    "aniso.arrays": "aniso.numeric.arrays",
    "aniso.moments": "aniso.numeric.moments",
    "aniso.sampling": "aniso.numeric.sampling",
    "aniso.rowwise": "aniso.numeric.rowwise",
    "aniso.store": "aniso.io.store",
    "aniso.inputs": "aniso.io.inputs",
    "aniso.inplace": "aniso.io.npy_view",
    "aniso.layout": "aniso.io.layout",
    "aniso.method_params": "aniso.methods.params",
    "aniso.closed_form": "aniso.methods.anisoalign.closed_form",
    "aniso.frame": "aniso.methods.anisoalign.frame",
    "aniso.polar": "aniso.methods.anisoalign.polar",
    "aniso.diagnostics": "aniso.quality.diagnostics",
    "aniso.metric_info": "aniso.quality.metric_info",
    "aniso.gate_metrics": "aniso.quality.gate_metrics",
    "aniso.gates": "aniso.quality.gates",
    "aniso.report": "aniso.quality.report",
    "aniso.report_plots": "aniso.quality.report_plots",
    "aniso.embed_stage": "aniso.stages.embed",
    "aniso.gate_stage": "aniso.stages.gate",
    "aniso.preflight": "aniso.stages.preflight",
    "aniso.publish": "aniso.published",
    "aniso.loader": "aniso.published.loader",
    "aniso.torch_loader": "aniso.published.torch_loader",
    "aniso.export": "aniso.published.export",
    "aniso.retention": "aniso.published.retention",
    "aniso.synthetic": "aniso.testing.synthetic",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already imported."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (called by ``import aniso``)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
