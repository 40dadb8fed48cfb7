"""Checks that run before any heavy work (and before a Prefect server is needed).

:func:`preflight` answers, within a bounded time even when an object store does not answer:

* are the inputs there and readable, do their dimensions agree, are there enough rows to fit
  and gate (:data:`MIN_ROWS`)?
* is the output root writable (the bucket exists, the credentials work)?
* does a ``--model`` reference resolve, does its text input have ids, and would the new version
  keep the dimension, dtype and id source of the dataset's ``LATEST``
  (:func:`aniso.stages.frozen.check_before_run`)?

Each failure is one :class:`~aniso.errors.InputError` (inputs) or
:class:`~aniso.errors.ConfigError` (storage) whose message names the URL or setting; the CLI
turns both into exit code 2. Settings themselves (method name, its parameters, credentials)
are validated when they load (:func:`aniso.config.load_settings`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aniso._fs import filesystem, is_local, join_url, refuse_url_credentials
from aniso.errors import AnisoError, ConfigError, InputError, StoreCorrupt, StoreNotFound

__all__ = ["MIN_ROWS", "TIMEOUT_S", "preflight", "check_output_root", "check_input", "probe_options",
           "STORAGE_VARIABLES", "storage_variables", "probe_here"]

logger = logging.getLogger(__name__)

#: Fewest rows per input: the gates compare k=10 neighbourhoods (11 rows) on a sample of more
#: than 10 rows, and the fit needs variance in both modalities.
MIN_ROWS = 12

#: Seconds one storage check may take (connect + answer) before it is reported as unreachable.
TIMEOUT_S = 5.0

T = TypeVar("T")


def probe_options(url: str, storage_options: dict[str, Any], timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """``storage_options`` for a quick check: short timeouts, one attempt, a fresh client.

    Only object stores get the botocore settings; the user's own options win for everything else.
    """
    options = dict(storage_options)
    if url.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        config.update(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1, "mode": "standard"})
        options["config_kwargs"] = config
        options["skip_instance_cache"] = True
    return options


def _within(seconds: float, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a daemon thread; raise ConfigError naming ``what`` when it does not finish."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="aniso-preflight", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ConfigError(f"{what}: no answer within {seconds:.0f} s (is the endpoint up and reachable?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _reason(exc: BaseException) -> str:
    """A one-line reason for a storage exception (botocore's messages are already one line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_output_root(root: str, dataset: str, storage_options: dict[str, Any], *, timeout: float = TIMEOUT_S) -> None:
    """Write and remove a small probe object under ``<root>/<dataset>/``.

    Raises
    ------
    ConfigError
        Naming ``storage.root`` and why: missing bucket, refused credentials, an endpoint that is
        down or silent, a path under a regular file, no permission.
    """
    options = probe_options(root, storage_options, timeout)
    probe = join_url(root, dataset, f".aniso-preflight-{uuid.uuid4().hex[:12]}")
    what = f"storage.root {root}"

    def write_and_remove() -> None:
        fs, path = filesystem(probe, options)
        if is_local(fs):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(b"aniso preflight\n")
        fs.rm(path)

    try:
        _within(timeout * 2, what, write_and_remove)
    except AnisoError:
        raise
    except (NotADirectoryError, FileExistsError) as exc:
        raise ConfigError(f"{what} is not writable: a part of the path is a regular file ({_reason(exc)})") from None
    except PermissionError as exc:
        raise ConfigError(f"{what} is not writable: permission denied; check the credentials "
                          f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) ({_reason(exc)})") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} is not writable: the bucket or folder does not exist ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any storage failure is reported as one line
        raise ConfigError(f"{what} is not writable: {_reason(exc)}") from None


def input_shape(url: str, storage_options: dict[str, Any], *, what: str) -> tuple[int, int] | None:
    """``(rows, dim)`` of an embedding input from headers only; ``None`` for a raw corpus.

    Raises
    ------
    InputError
        When the input does not exist or is not readable.
    """
    from aniso.io.inputs import input_form, read_npy_header  # pyarrow: only once there is an input
    from aniso.io.store import EmbeddingStore

    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"{what}: {url} does not exist")
    form = input_form(url, storage_options)
    if form.kind == "corpus":
        return None  # raw text or images (or a folder of them): planned by the embed stage
    if form.kind == "zarr":
        try:
            store = EmbeddingStore.open(url, storage_options=storage_options)
        except (StoreNotFound, StoreCorrupt) as exc:
            raise InputError(f"{what}: {exc}") from None
        return store.n_rows, store.dim
    parts = [read_npy_header(part_url, storage_options) for part_url in form.files]
    dims = sorted({part.dim for part in parts})
    if len(dims) > 1:
        raise InputError(f"{what}: the .npy files in {url} differ in dimension ({dims})")
    return sum(part.rows for part in parts), dims[0]


def check_input(url: str, storage_options: dict[str, Any], *, what: str, timeout: float = TIMEOUT_S) -> tuple[int, int] | None:
    """Check one input is readable and large enough; returns ``(rows, dim)`` or ``None`` (corpus)."""
    refuse_url_credentials(url, what)
    options = probe_options(url, storage_options, timeout)

    def look() -> tuple[int, int] | None:
        return input_shape(url, options, what=what)

    try:
        shape = _within(timeout * 2, f"{what} {url}", look)
    except AnisoError as exc:
        if isinstance(exc, ConfigError) and "no answer" in str(exc):
            raise InputError(str(exc)) from None
        raise
    except PermissionError as exc:
        raise InputError(f"{what}: {url} is not readable: permission denied ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any storage failure is reported as one line
        raise InputError(f"{what}: {url} is not readable: {_reason(exc)}") from None
    if shape is not None and shape[0] < MIN_ROWS:
        rows = "holds no rows (empty input)" if shape[0] == 0 else f"has {shape[0]} row(s)"
        raise InputError(
            f"{what}: {url} {rows}; at least {MIN_ROWS} are needed to fit and gate "
            "(the gates compare 10-nearest-neighbour sets)"
        )
    return shape


def preflight(text: str, image: str, settings: Any, *, timeout: float = TIMEOUT_S) -> str:
    """Every check of a ``produce`` run that needs no heavy work; raises on the first failure.

    Parameters
    ----------
    text, image
        The run's inputs (embedding inputs or raw corpora).
    settings
        :class:`aniso.config.Settings` (already validated when loaded).
    timeout
        Seconds for each storage check (an endpoint that does not answer fails after about
        twice this, never later).

    Returns
    -------
    str
        Where the text input's ids come from (``"input"`` or ``"row-number"``:
        :func:`aniso.stages.frozen.input_id_source`), for the run to record.
    """
    started = time.perf_counter()
    options = settings.storage.fs_options()
    shapes = {name: check_input(url, options, what=f"{name} input", timeout=timeout)
              for name, url in (("text", text), ("image", image))}
    if shapes["text"] and shapes["image"] and shapes["text"][1] != shapes["image"][1]:
        raise InputError(f"text embeddings ({text}) have d={shapes['text'][1]} but image embeddings "
                         f"({image}) have d={shapes['image'][1]}")
    check_extras(shapes, (text, image))
    check_output_root(settings.storage.root, settings.storage.dataset, options, timeout=timeout)
    from aniso.stages.frozen import check_before_run

    # a frozen model's reference and ids, and the schema of the version LATEST names
    id_source = check_before_run(text, shapes["text"][1] if shapes["text"] else None, settings, options)
    logger.info("preflight passed in %.2f s", time.perf_counter() - started)
    return id_source


def check_extras(shapes: dict[str, tuple[int, int] | None], urls: tuple[str, str]) -> None:
    """The optional dependencies the run will need are installed.

    Raises
    ------
    MissingExtra
        A raw corpus without the ``embed`` extra (torch, open_clip): one line naming the extra.
    """
    from aniso._extras import require

    for (name, shape), url in zip(shapes.items(), urls):
        if shape is None:  # a raw corpus: embedded with open_clip first
            for module in ("torch", "open_clip"):
                require(module, extra="embed", purpose=f"embedding the raw {name} corpus {url}")


#: Environment variables through which fsspec/s3fs/botocore find object-store credentials,
#: profiles, endpoints and regions.
STORAGE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                     "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                     "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def storage_variables() -> list[str]:
    """The :data:`STORAGE_VARIABLES` set in this process's environment (names only, never values)."""
    return [name for name in STORAGE_VARIABLES if os.environ.get(name)]


def probe_here(text: str, image: str, root: str, dataset: str, storage_options: dict[str, Any],
               expected: list[str], *, timeout: float = TIMEOUT_S) -> str | None:
    """The preflight's probe as one Dask worker runs it: read both inputs' headers and write (then
    remove) a probe object under the output root, from this worker's environment.

    Parameters
    ----------
    expected
        The storage variables set where the flow runs (:func:`storage_variables`): those this
        worker lacks are named in the reason.

    Returns
    -------
    str or None
        None when everything is reachable; else one line: what failed, and the storage
        variables this worker's environment lacks.
    """
    try:
        for name, url in (("text", text), ("image", image)):
            check_input(url, storage_options, what=f"{name} input", timeout=timeout)
        check_output_root(root, dataset, storage_options, timeout=timeout)
    except AnisoError as exc:
        missing = [name for name in expected if not os.environ.get(name)]
        hint = (f"; this worker's environment lacks {', '.join(missing)} (set where the flow runs)" if missing
                else "; this worker's environment has the same storage variables as the flow's")
        return " ".join(str(exc).split()) + hint
    return None
