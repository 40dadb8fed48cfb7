"""Setting values as text: YAML files, ``ANISO_<SECTION>__<FIELD>`` variables and ``--set``
overrides, read into the nested mapping :func:`aniso.config.load_settings` validates.

Kept apart from the settings models (:mod:`aniso.config`), which it reads only through the
root model it is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aniso.errors import ConfigError

__all__ = ["deep_merge", "read_yaml", "parse_value", "env_overrides", "parse_overrides", "describe_errors"]


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` layered over it, section by section."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.replace("__", ".").split(".") if p]
    if not parts:
        raise ConfigError(f"empty setting name in {dotted!r}")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"setting {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing, malformed or non-mapping file raises ConfigError."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return data


def _is_text_setting(root: type[BaseModel], dotted: str) -> bool:
    """Whether ``dotted`` names a plain string setting of ``root`` (``storage.dataset``)."""
    model = root
    parts = [p for p in dotted.replace("__", ".").split(".") if p]
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        return i == len(parts) - 1 and annotation in (str, str | None)
    return False


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(root: type[BaseModel], dotted: str, raw: str) -> Any:
    """The value of a ``--set`` / ``ANISO_`` string for setting ``dotted`` of ``root``.

    A string setting takes the text verbatim (``2024``, ``no`` and ``x #1`` stay strings; YAML
    would read an int, ``False`` and ``x``); quotes around it are removed. Any other setting
    reads the text as a YAML scalar or flow collection (``64``, ``true``, ``null``, ``[a, b]``),
    and ``1e12`` as the number it is (YAML 1.1 reads it as text), so that the setting's bound,
    not a parse error, answers.
    """
    if raw == "":
        return None
    if _is_text_setting(root, dotted):
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        return raw[1:-1] if quoted else raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return float(value) if isinstance(value, str) and _FLOAT.fullmatch(value) else value


def env_overrides(root: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``ANISO_<SECTION>__<FIELD>`` variables of ``environ`` as a nested mapping."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith("ANISO_") or key == "ANISO_PROFILE" or "__" not in key:
            continue
        dotted = key[len("ANISO_") :].lower()
        _set_path(out, dotted, parse_value(root, dotted, raw))
    return out


def parse_overrides(root: type[BaseModel], overrides: Iterable[str]) -> dict[str, Any]:
    """``["embed.batch_size=64", ...]`` → nested dict (each value read by :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(out, key.strip(), parse_value(root, key.strip(), raw))
    return out


def describe_errors(exc: ValidationError) -> str:
    """One line for a settings ValidationError; each problem names its ``section.field``."""
    problems = []
    for err in exc.errors():
        if err["type"] == "value_error" and "error" in err.get("ctx", {}):
            problems.append(str(err["ctx"]["error"]))  # our validators name the field themselves
        else:
            problems.append(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    return "; ".join(problems)
