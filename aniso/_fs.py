"""Thin fsspec helpers: one code path for local directories and object storage.

URLs without a scheme are local paths. ``storage_options`` are passed to the filesystem as they
are; with none given, s3fs/boto read the standard ``AWS_*`` variables, profiles and
``AWS_ENDPOINT_URL`` like every other tool.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import posixpath
import re
import uuid
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode

import fsspec
from fsspec.core import url_to_fs

from aniso.errors import ConfigError, InputError

__all__ = ["filesystem", "absolute_url", "join_url", "open_url", "exists", "is_local", "write_atomic", "write_json", "link_or_copy", "redact_url",
           "is_credential_key", "url_credentials", "credential_paths", "resolve_env_refs",
           "refuse_url_credentials"]


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path within it."""
    return url_to_fs(url, **(storage_options or {}))


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a URL with ``/`` (works for local paths and ``scheme://`` URLs)."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return posixpath.join(base, *parts)


def absolute_url(url: str) -> str:
    """``url`` with a relative local path made absolute (against this process's directory).

    A run's tasks may execute on Dask workers started in other directories (or on other
    machines with the same mounts): every local path the flow hands them must be absolute.
    URLs with a scheme are returned as they are.
    """
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


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
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            # a full disk, a signal: leave no half-written temporary behind (it holds space)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, payload)


def link_or_copy(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """Place ``source``'s file at ``target`` without passing its bytes through this process where
    the storage allows: a hard link locally (a copy across devices), a server-side copy on object
    storage. A file already at ``target`` is replaced; aniso never writes a file in place, so
    linked files stay what they were."""
    if is_local(fs):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.exists(target):
            os.unlink(target)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    else:
        fs.copy(source, target)


def write_json(url: str, payload: dict[str, Any], storage_options: dict[str, Any]) -> None:
    """``payload`` as indented, key-sorted JSON at ``url`` (anything not JSON-able as ``str``),
    written whole (:func:`write_atomic`): a concurrent run or a crash never leaves half a file."""
    write_atomic(url, json.dumps(payload, indent=2, sort_keys=True, default=str), storage_options)


# -- secrets: one rule for every setting, URL and mapping ------------------------------------
#: Keys (case-insensitive) that hold a credential wherever they appear: a storage option, a
#: cluster's environment, a URL's query parameter.
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "password", "passwd", "session_token", "access_key", "secret_key",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
    "client_secret", "credentials", "token_file", "auth", "sig", "api_key", "apikey",
})
#: Parts of a key that mark a credential (``SSECustomerKey``, ``AWS_SECRET_ACCESS_KEY``,
#: ``X-Amz-Security-Token``, ``Authorization``, ``DB_PASSWORD``, ``X-Amz-Signature``, ...).
CREDENTIAL_WORDS = ("secret", "password", "passwd", "token", "customerkey", "credential", "authorization",
                    "signature", "private_key", "cookie")

#: A value that names an environment variable instead of holding the secret: ``${NAME}``.
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def is_credential_key(name: object) -> bool:
    """Whether a mapping key or URL query parameter named ``name`` holds a credential."""
    lowered = str(name).lower().replace("-", "_")
    return lowered in CREDENTIAL_KEYS or any(word in lowered.replace("_", "") or word in lowered
                                             for word in CREDENTIAL_WORDS)


def _split_url(url: str) -> tuple[str, str, str, str] | None:
    """``(scheme, userinfo, rest after the authority, query)`` of a ``scheme://`` URL."""
    if "://" not in url:
        return None
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    userinfo = authority.rpartition("@")[0] if "@" in authority else ""
    query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
    return scheme, userinfo, path, query


def url_credentials(url: str) -> list[str]:
    """What in ``url`` is a credential: ``"user:password@"`` and each credential query
    parameter (``"?sig="``); empty when none (the values themselves are never returned)."""
    parts = _split_url(url) if isinstance(url, str) else None
    if parts is None:
        return []
    found = ["user:password@"] if parts[1] else []
    found += [f"?{name}=" for name, _ in parse_qsl(parts[3], keep_blank_values=True) if is_credential_key(name)]
    return found


def refuse_url_credentials(url: str, what: str) -> None:
    """Raise InputError when an input URL carries credentials.

    Input URLs are flow parameters (stored in the Prefect database) and are recorded under the
    output root (``view.json``, store attributes), so a URL with a password is refused before
    either happens; the message shows the URL redacted.
    """
    found = url_credentials(url)
    if found:
        raise InputError(
            f"{what}: {redact_url(url)} carries credentials ({', '.join(found)}), which would be stored in the "
            "Prefect database and under the output root; give them through the environment instead "
            "(AWS_* variables or AWS_PROFILE for s3://, ~/.netrc for http(s)://)"
        )


def credential_paths(value: Any, prefix: str) -> list[str]:
    """The dotted paths under ``value`` (mappings, lists, strings) that hold a credential.

    A credential key whose value is ``None`` or a ``${NAME}`` reference holds none (the secret
    stays in the environment, see :func:`resolve_env_refs`); a string holds one when it is a URL
    with :func:`url_credentials`.
    """
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            name = f"{prefix}.{key}"
            if is_credential_key(key) and not (item is None or (isinstance(item, str) and _ENV_REF.match(item))):
                out.append(name)
            else:
                out.extend(credential_paths(item, name))
        return out
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in credential_paths(item, f"{prefix}[{i}]")]
    return [prefix] if isinstance(value, str) and url_credentials(value) else []


def resolve_env_refs(value: Any) -> Any:
    """``value`` with each ``${NAME}`` string replaced by the environment variable ``NAME``.

    Settings keep secrets as such references (they are stored as Prefect flow parameters); this
    is called where the value is handed to fsspec or Dask, in the process that uses it.

    Raises
    ------
    ConfigError
        When a referenced variable is not set (the message names the variable only).
    """
    if isinstance(value, Mapping):
        return {key: resolve_env_refs(item) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_env_refs(item) for item in value]
    if isinstance(value, str) and (match := _ENV_REF.match(value)):
        if match.group(1) not in os.environ:
            raise ConfigError(f"setting refers to ${{{match.group(1)}}}, which is not set in this environment")
        return os.environ[match.group(1)]
    return value


def redact_url(url: str) -> str:
    """``url`` without its credentials (``user:password@`` dropped, credential query values
    replaced by ``REDACTED``), before it is written or shown anywhere."""
    parts = _split_url(url)
    if parts is None or not url_credentials(url):
        return url
    scheme, userinfo, _, query = parts
    out = url.replace(f"{scheme}://{userinfo}@", f"{scheme}://", 1) if userinfo else url
    if query:
        pairs = [(k, "REDACTED" if is_credential_key(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        out = out.replace(query, urlencode(pairs), 1)
    return out
