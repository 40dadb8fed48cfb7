"""One typed settings tree for the whole pipeline.

Sources, lowest precedence first:

1. the defaults of the models below;
2. ``conf/default.yaml``, then ``conf/<profile>.yaml`` (``--profile`` / ``ANISO_PROFILE``);
3. an explicit YAML file (``--config FILE``);
4. ``ANISO_<SECTION>__<FIELD>`` environment variables (values parsed as YAML scalars);
5. ``--set section.field=value`` overrides.

The same :class:`Settings` model is the Prefect flow parameter, so deployments pass JSON that is
validated exactly like a CLI run. :func:`config_hash` hashes only the *semantic* part (fields that
change the result); execution details (workers, threads, devices, batch sizes, storage) are
excluded, so a run resumes when only those change.

Secrets never enter the settings: a credential in any setting (a key such as ``secret``,
``SSECustomerKey`` or ``AWS_SECRET_ACCESS_KEY`` in ``storage.storage_options`` or
``cluster.cluster_kwargs``, a URL with ``user:password@`` or a signature parameter; the one rule is
:func:`aniso._fs.credential_paths`) is rejected unless written ``${ENV_VAR}`` (read where it is
used), because the settings are a flow parameter and Prefect stores flow parameters in its
database. Credentials come from where s3fs/botocore read them:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` with
``~/.aws/credentials``, or an instance/pod role.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aniso import _config_text as _text
from aniso._config_text import read_yaml  # noqa: F401 - part of this module's interface
from aniso._fs import credential_paths, resolve_env_refs
from aniso.errors import ConfigError
from aniso.methods.params import semantic_params, validate_method

__all__ = [
    "Settings",
    "StorageSettings",
    "StoreSettings",
    "EmbedSettings",
    "CorpusSettings",
    "MethodSettings",
    "FitSettings",
    "GateSettings",
    "PublishSettings",
    "ClusterSettings",
    "load_settings",
    "config_hash",
    "semantic_config",
    "CONF_DIR",
]



def _find_conf_dir() -> Path:
    """The YAML profiles: ``aniso/conf`` when installed from a wheel, ``conf/`` in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "default.yaml").exists() else package.parent / "conf"


#: Where the YAML profiles live (shipped inside the package so an installed CLI finds them).
CONF_DIR = _find_conf_dir()

#: Mark a field as an execution detail: it never enters the config hash / run key.
EXECUTION = {"execution": True}
#: Mark a semantic field added after configurations were hashed: at its default it stays out of
#: the config hash, so settings that do not use it hash as they did (the hash recorded in lineages,
#: reports and embedding stores; a run key still changes with the code version).
ADDED_LATER = {"omit_at_default": True}


class _Section(BaseModel):
    # hide_input_in_errors: a refused value (perhaps a secret) is never echoed by pydantic
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)
    #: The section's name in the tree (``storage``, ``gates``, ...), for messages.
    section: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        """Refuse a credential in any field (a mapping key such as ``SSECustomerKey`` or
        ``AWS_SECRET_ACCESS_KEY``, a URL with ``user:password@``) before anything can echo it;
        also on assignment, where ``data`` holds the assigned field only."""
        if isinstance(data, Mapping):
            found = credential_paths(dict(data), cls.section)
            if found:
                raise ValueError(f"{', '.join(found)}: {_NO_SECRETS}")
        return data


#: Largest seed: numpy's generators take any non-negative int, this keeps seeds portable (uint32).
MAX_SEED = 2**32 - 1

#: Dataset names: one path segment of letters, digits, ``.``, ``_`` and ``-``, starting with a
#: letter or digit (never ``..``, a slash, a space or ``#``).
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_NO_SECRETS = (
    "credentials are not accepted in settings (settings are Prefect flow parameters, stored in its "
    "database); export AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) or use AWS_PROFILE, "
    "or give the value as ${ENV_VAR}, read where the flow runs"
)


def _finite(default: float, **bounds: float) -> Any:
    """A float setting within ``bounds`` that refuses NaN and ±inf."""
    return Field(default, allow_inf_nan=False, **bounds)


class StorageSettings(_Section):
    """Where data lives. ``root`` is any fsspec URL; credentials are never settings."""

    section: ClassVar[str] = "storage"

    root: str = Field(".aniso-demo", json_schema_extra=EXECUTION)
    dataset: str = "demo"
    storage_options: dict[str, Any] = Field(default_factory=dict, json_schema_extra=EXECUTION)

    @field_validator("dataset")
    @classmethod
    def _safe_dataset(cls, value: str) -> str:
        # the name is a path segment under the root: anything else could publish elsewhere
        if not _DATASET_NAME.fullmatch(value):
            raise ValueError(
                f"storage.dataset: {value!r} is not a dataset name (1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit)"
            )
        return value

    def fs_options(self) -> dict[str, Any]:
        """``storage_options`` for fsspec, each ``${ENV_VAR}`` value read from the environment."""
        return resolve_env_refs(dict(self.storage_options))


class StoreSettings(_Section):
    """Zarr layout: chunk = read unit, shard = write unit (one task owns whole shards)."""

    section: ClassVar[str] = "store"

    # A shard is one task's write buffer: 2^20 rows x d=1024 float32 is 4 GiB (24 GiB machine).
    chunk_rows: int = Field(4096, gt=0, le=2**18)
    shard_rows: int = Field(65536, gt=0, le=2**20)
    #: Embedding chunks: unit-norm float32 compresses ~7% with zstd at twice the write cost
    #: (docs/performance.md), so chunks are stored plain by default.
    compressor: Literal["zstd", "none"] = "none"
    output_dtype: Literal["float32", "float16"] = "float32"


class CorpusSettings(_Section):
    """How raw corpora are read and split into shards."""

    section: ClassVar[str] = "corpus"

    text_field: str = "text"
    id_field: str | None = "id"
    #: clip-retrieval metadata: "auto" (id, key, image_path, url), a column name, or "row-number"
    embedding_ids: str = "auto"
    items_per_shard: int = Field(4096, gt=0, le=2**20)
    #: Ids of webdataset tar samples: ``key`` (the sample's key, as webdataset names it; keys must
    #: then be unique across the tars) or ``path`` (``<tar path without .tar>/<key>``: for tars
    #: whose keys repeat from one file to the next)
    tar_ids: Literal["key", "path"] = Field("key", json_schema_extra=ADDED_LATER)
    max_failure_rate: float = Field(0.01, ge=0.0, le=1.0, allow_inf_nan=False, json_schema_extra=EXECUTION)


class EmbedSettings(_Section):
    """open_clip encoder. ``pretrained`` is a tag (needs network once) or a local checkpoint path."""

    section: ClassVar[str] = "embed"

    model: str = "aniso-demo-tiny"
    pretrained: str | None = "demo"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=EXECUTION)
    require_gpu: bool = Field(False, json_schema_extra=EXECUTION)
    batch_size: int = Field(256, gt=0, le=65_536, json_schema_extra=EXECUTION)
    decode_workers: int = Field(2, ge=0, le=64, json_schema_extra=EXECUTION)


class MethodSettings(_Section):
    """Which aligner runs and its hyper-parameters, validated against the method's own
    parameter model (:mod:`aniso.methods.params`) when the settings load."""

    section: ClassVar[str] = "method"

    name: str = "anisoalign"
    params: dict[str, Any] = Field(default_factory=dict)
    #: Apply a frozen model instead of fitting (``aniso produce --model REF``): ``latest``, a
    #: published version of the dataset, or a model folder URL. An execution detail here: the
    #: model's own checksum, method and parameters key the run (:mod:`aniso.published.model`).
    model: str | None = Field(None, min_length=1, max_length=2048, json_schema_extra=EXECUTION)
    #: What a frozen-model run does when its inputs drifted past the ``input_drift`` bounds:
    #: ``never`` refits (the run fails, exit 3) or ``on_drift`` (fits a new model instead, and
    #: says so in the lineage).
    refit: Literal["never", "on_drift"] = Field("never", json_schema_extra=EXECUTION)

    @model_validator(mode="after")
    def _known_method(self) -> MethodSettings:
        try:
            validate_method(self.name, self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class FitSettings(_Section):
    """Fitting pass: sampling for methods that train on rows."""

    section: ClassVar[str] = "fit"

    seed: int = Field(0, ge=0, le=MAX_SEED)
    #: Rows of each modality for methods that fit on samples (None: the method's own default);
    #: at most 200,000 (x d=1024 float64: 1.6 GiB per modality, and the fit works on copies).
    sample_size: int | None = Field(None, ge=2, le=200_000)


class GateSettings(_Section):
    """Quality-gate bounds (a failed gate blocks publication)."""

    section: ClassVar[str] = "gates"

    # Bounds of what each metric can be: a centroid residual of unit vectors is at most 2.
    centroid_residual_max: float = _finite(1e-3, ge=0.0, le=2.0)
    norm_tolerance: float = _finite(1e-3, gt=0.0, le=1.0)
    knn_overlap_min: float = _finite(0.3, ge=0.0, le=1.0)
    spearman_min: float = _finite(0.5, ge=-1.0, le=1.0)
    #: Text rows sampled for the gates; the kNN metrics hold a rows x rows block (16,384: 2 GiB).
    sample_rows: int = Field(2048, gt=10, le=16_384)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    #: Image rows (and as many substitutes) for the reported, not gated, distribution metrics.
    #: MMD holds three rows x rows float64 matrices and their temporaries (8,192: ~3 GiB).
    distribution_sample_rows: int = Field(1024, gt=10, le=8192)
    #: Random pairs for the pairwise-cosine Spearman gate (all pairs when the sample has fewer).
    #: ``centroid_residual`` bound of a run that applies a frozen model (``method.model``): its
    #: calibration belongs to the text it was fitted on, so new rows move the centroid by their
    #: sampling noise; a larger shift is drift (docs/format.md, "The model").
    frozen_centroid_residual_max: float = _finite(0.05, ge=0.0, le=2.0)
    #: Each pair gathers two rows of each set as float64 (500,000 pairs x d=1024: 8 GiB at peak).
    spearman_pairs: int = Field(20_000, gt=100, le=500_000)
    #: At most this many read chunks per store are read to draw a sample (0: no limit).
    sample_chunks: int = Field(16, ge=0, le=1_000_000)
    #: The suites file (default ``conf/gates.yaml``); bounds written ``"{field}"`` come from here.
    suite_file: str | None = None
    #: Write ``quality/report.html`` and ``report.json`` beside ``gates.json``.
    report: bool = True


class PublishSettings(_Section):
    """Publication guard rails (:mod:`aniso.published.guard`)."""

    section: ClassVar[str] = "publish"

    #: Publish a version whose dimension, dtype or id source differ from ``LATEST``'s.
    allow_schema_change: bool = Field(False, json_schema_extra=EXECUTION)


class ClusterSettings(_Section):
    """Dask: a local cluster by default, an existing scheduler when ``address`` is set."""

    section: ClassVar[str] = "cluster"

    address: str | None = None
    cluster_class: str | None = None  # e.g. "dask_cuda.LocalCUDACluster"
    n_workers: int = Field(2, gt=0, le=1024)
    threads_per_worker: int = Field(1, gt=0, le=256)
    processes: bool = False
    #: Address of the Dask dashboard of a local cluster (e.g. ``":8787"``); off when unset.
    dashboard: str | None = None
    cluster_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Seconds the run waits for its first Dask worker before it stops (exit 1, one line): a
    #: scheduler without workers otherwise leaves every task queued for ever.
    wait_timeout: float = Field(60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _fits_this_machine(self) -> ClusterSettings:
        # A local cluster shares this machine's cores: more worker threads than twice the cores
        # only adds switching and memory (64 workers on 2 cores did not finish 3,000 rows in
        # 300 s). Remote clusters (an address, another cluster class) size themselves.
        local = self.address is None and (self.cluster_class or "distributed.LocalCluster").endswith(".LocalCluster")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        limit = max(4, 2 * cores)
        if local and self.n_workers * self.threads_per_worker > limit:
            raise ValueError(
                f"cluster.n_workers x cluster.threads_per_worker = {self.n_workers} x {self.threads_per_worker} "
                f"exceeds {limit} (twice the {cores} core(s) of this machine, at least 4) for a local cluster"
            )
        return self


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="ANISO_", env_nested_delimiter="__", extra="forbid", validate_assignment=True,
        hide_input_in_errors=True,
    )

    storage: StorageSettings = Field(default_factory=StorageSettings, json_schema_extra=EXECUTION)
    store: StoreSettings = Field(default_factory=StoreSettings)
    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    method: MethodSettings = Field(default_factory=MethodSettings)
    fit: FitSettings = Field(default_factory=FitSettings)
    gates: GateSettings = Field(default_factory=GateSettings, json_schema_extra=EXECUTION)
    publish: PublishSettings = Field(default_factory=PublishSettings, json_schema_extra=EXECUTION)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings, json_schema_extra=EXECUTION)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Layering (YAML, env, --set) is done explicitly by load_settings so that its order is
        # documented in one place; the model itself only validates what it is given.
        return (init_settings,)


# -- layering -------------------------------------------------------------------------------
def parse_value(dotted: str, raw: str) -> Any:
    """The value of a ``--set`` / ``ANISO_`` string for setting ``dotted``
    (:func:`aniso._config_text.parse_value`: string settings verbatim, others as YAML)."""
    return _text.parse_value(Settings, dotted, raw)


def load_settings(
    profile: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings from profiles, a file, the environment and ``--set`` overrides.

    ``values`` (a nested mapping, e.g. a deployment's ``settings`` parameter) is layered like the
    ``config_file``, after it and before the environment. ``options`` (a nested mapping of typed
    values, e.g. the CLI's ``--out`` and ``--dataset``) is layered last, over ``overrides``.
    """
    environ = os.environ if environ is None else environ
    data = _text.read_yaml(CONF_DIR / "default.yaml") if (CONF_DIR / "default.yaml").exists() else {}
    profile = profile or environ.get("ANISO_PROFILE")
    if profile and profile != "default":
        data = _text.deep_merge(data, _text.read_yaml(CONF_DIR / f"{profile}.yaml"))
    if config_file:
        data = _text.deep_merge(data, _text.read_yaml(Path(config_file)))
    if values:
        data = _text.deep_merge(data, values)
    data = _text.deep_merge(data, _text.env_overrides(Settings, environ))
    data = _text.deep_merge(data, _text.parse_overrides(Settings, overrides))
    data = _text.deep_merge(data, dict(options or {}))
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_text.describe_errors(exc)}") from None


# -- hashing --------------------------------------------------------------------------------
def _semantic(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        value = getattr(model, name)
        if extra.get("execution") or (extra.get("omit_at_default") and value == field.default):
            continue
        out[name] = _semantic(value) if isinstance(value, BaseModel) else value
    return out


def semantic_config(settings: Settings) -> dict[str, Any]:
    """The part of the settings that determines the result (no execution details, no secrets).

    Fields marked ``EXECUTION`` are left out, and so are a method's execution-only parameters
    (``execution_params`` in :data:`aniso.methods.table.METHODS`, e.g. ``torch_threads`` of
    AnisoAlign's former learned stages).
    """
    out = _semantic(settings)
    out["method"]["params"] = semantic_params(settings.method.name, settings.method.params)
    return out


def config_hash(settings: Settings, length: int = 16) -> str:
    """Stable hash of :func:`semantic_config` (canonical JSON, sorted keys)."""
    canonical = json.dumps(semantic_config(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
