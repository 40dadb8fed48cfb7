"""The package's layout as a contract: each folder is one role, nothing imports upward, no module
cycles, and the module paths of the earlier flat layout still import (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from aniso._moved import MOVED

REPO = Path(__file__).resolve().parents[1]

#: Layers, lowest first: a module may import its own layer or a lower one, never a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("aniso.errors", "aniso._version", "aniso._moved"),
    ("aniso._fs", "aniso._extras", "aniso.progress", "aniso.methods.table"),
    ("aniso.methods.params", "aniso._config_text", "aniso.config"),
    ("aniso.numeric",),
    ("aniso.io", "aniso.corpus", "aniso.demo", "aniso.testing"),
    ("aniso.methods", "aniso.encode"),
    ("aniso.quality",),
    ("aniso.published",),
    ("aniso.stages",),
    ("aniso.tasks",),
    ("aniso.flows",),
]


def _module_files() -> dict[str, Path]:
    """Every module of the installed layout: ``aniso/``, and ``flows/``, ``tasks/`` as aniso.*."""
    out = {}
    for top in ("aniso", "flows", "tasks"):
        for path in (REPO / top).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if top != "aniso":
                parts = ["aniso", *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _runtime_nodes(tree: ast.AST):
    """Every node that can run: what sits under ``if TYPE_CHECKING:`` is for type checkers only."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for other in node.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path) -> set[str]:
    """Modules of aniso that ``name`` imports anywhere in its body (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                if target in MODULES and target != name:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES and a.name != name)
    return found


def _layer(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} belongs to no layer: add it to LAYERS"
    return rank


def test_nothing_imports_upward():
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, path in MODULES.items() if name != "aniso"  # the curated surface re-exports lazily
        for target in sorted(_imports(name, path)) if target != "aniso" and _layer(target) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_modules():
    """Package ``__init__`` files are left out: they only gather their own modules' names."""
    graph = {name: {t for t in _imports(name, path) if MODULES[t].name != "__init__.py"}
             for name, path in MODULES.items() if path.name != "__init__.py"}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_package_top_level_holds_only_the_cross_cutting_modules():
    top = sorted(p.stem for p in (REPO / "aniso").glob("*.py") if p.stem != "__init__")
    assert top == ["_config_text", "_extras", "_fs", "_moved", "_version", "config", "encode", "errors", "progress"]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_module_still_imports_from_its_former_path(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_the_repository_uses_only_the_current_paths():
    """The former paths exist for users' code; aniso's own code, tests, benchmarks and docs use
    the current ones."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(old) for old in MOVED) + r")\b(?![.\w])")
    hits = []
    for path in [*REPO.glob("*.md"), *(REPO / "docs").rglob("*.md"), *(REPO / "infra").rglob("*"),
                 *(p for top in ("aniso", "flows", "tasks", "tests", "bench") for p in (REPO / top).rglob("*.py"))]:
        if path.is_dir() or path.name in ("_moved.py", Path(__file__).name) or path.suffix in (".pt",):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
