"""The aniso error hierarchy.

Every error raised on purpose by aniso derives from :class:`AnisoError` and, where one fits, from
the matching builtin too, so callers can catch either (zarr-python's convention)::

    try:
        produce(...)
    except InputError as exc:      # or: except ValueError
        ...
"""

from __future__ import annotations

__all__ = [
    "AnisoError",
    "ConfigError",
    "InputError",
    "SchemaChanged",
    "ShardAlignmentError",
    "StoreCorrupt",
    "StoreNotFound",
    "NotFittedError",
    "GateFailed",
    "FailureRateExceeded",
    "DeviceUnavailable",
    "ClusterUnavailable",
    "MissingExtra",
]


class AnisoError(Exception):
    """Base class of every error aniso raises on purpose."""


class ConfigError(AnisoError, ValueError):
    """A setting is missing, malformed or inconsistent."""


class InputError(AnisoError, ValueError):
    """Input data is unusable (wrong shape, NaN rows, empty, mismatched ids, ...).

    The message always names the offending file, row or value.
    """


class SchemaChanged(InputError):
    """A new version's dimension, dtype or id source differs from the dataset's ``LATEST``
    (refused unless ``publish.allow_schema_change``)."""


class ShardAlignmentError(AnisoError, ValueError):
    """A write does not cover whole Zarr shards (concurrent partial-shard writes lose data)."""


class StoreCorrupt(AnisoError, OSError):
    """An existing store is truncated, corrupted or inconsistent with its metadata."""


class StoreNotFound(AnisoError, FileNotFoundError):
    """A store, manifest or pointer that should exist does not."""


class NotFittedError(AnisoError, RuntimeError):
    """An aligner was used before ``fit`` (or ``load``)."""


class GateFailed(AnisoError, RuntimeError):
    """One or more quality gates failed; nothing was published.

    Parameters
    ----------
    message
        Human-readable summary.
    failures
        One entry per failed expectation: ``{"name", "observed", "bound"}``.
    """

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = list(failures or [])


class FailureRateExceeded(AnisoError, RuntimeError):
    """Too many items of a corpus failed to read/decode/encode."""


class DeviceUnavailable(AnisoError, RuntimeError):
    """A GPU was required (``require_gpu``) but none is usable."""


class ClusterUnavailable(AnisoError, RuntimeError):
    """The Dask cluster has no worker to run on (none joined within ``cluster.wait_timeout``)."""


class MissingExtra(ConfigError, ImportError):
    """What the settings ask for needs an optional dependency that is not installed; the message
    names the extra that installs it (``pip install "aniso[embed]"``)."""
