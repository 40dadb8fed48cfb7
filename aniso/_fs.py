"""Thin fsspec helpers: one code path for local directories and object storage.

URLs without a scheme are local paths. ``storage_options`` are passed to the filesystem as they
are; with none given, s3fs/boto read the standard ``AWS_*`` variables, profiles and
``AWS_ENDPOINT_URL`` like every other tool.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

__all__ = ["filesystem", "join_url", "open_url", "exists", "is_local", "write_atomic", "write_json", "redact_url"]


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path within it."""
    return url_to_fs(url, **(storage_options or {}))


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a URL with ``/`` (works for local paths and ``scheme://`` URLs)."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return posixpath.join(base, *parts)


def open_url(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None) -> IO:
    """Open ``url`` for reading or writing; parent folders are created when writing locally."""
    fs, path = filesystem(url, storage_options)
    if "w" in mode and is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return fs.open(path, mode)


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(fs.exists(path))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def write_atomic(url: str, data: bytes | str, storage_options: dict[str, Any] | None = None) -> None:
    """Write a whole object so that readers see all of it or none of it.

    Local files go through a synced temporary file and ``os.replace``; object stores get a single
    PUT, which they make visible whole or not at all.
    """
    payload = data.encode() if isinstance(data, str) else data
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, payload)


def write_json(url: str, payload: dict[str, Any], storage_options: dict[str, Any]) -> None:
    """``payload`` as indented, key-sorted JSON at ``url`` (anything not JSON-able as ``str``)."""
    with open_url(url, "w", storage_options) as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, before it is written anywhere."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url
