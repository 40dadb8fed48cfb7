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

Secrets never enter the settings: credential keys in ``storage.storage_options`` (and URLs with
``user:password@``) are rejected, because the settings are a flow parameter and Prefect stores
flow parameters in its database. Credentials come from where s3fs/botocore read them:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` with
``~/.aws/credentials``, or an instance/pod role.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: storage_options keys (at any depth, case-insensitive) that hold credentials.
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "password", "passwd", "session_token", "access_key", "secret_key",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
    "client_secret", "credentials", "token_file",
})


def _credential_paths(value: Any, prefix: str) -> list[str]:
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            name = f"{prefix}.{key}"
            lowered = str(key).lower()
            if lowered in CREDENTIAL_KEYS or "secret" in lowered or "password" in lowered:
                out.append(name)
            else:
                out.extend(_credential_paths(item, name))
        return out
    return []


def _url_has_userinfo(url: str) -> bool:
    return "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]


class StorageSettings(_Section):
    """Where data lives. ``root`` is any fsspec URL; credentials are never settings."""

    root: str = Field(".aniso-demo", json_schema_extra=EXECUTION)
    dataset: str = "demo"
    storage_options: dict[str, Any] = Field(default_factory=dict, json_schema_extra=EXECUTION)

    @model_validator(mode="before")
    @classmethod
    def _no_secret_field(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "aws_secret_access_key" in data:
            raise ValueError(
                "storage.aws_secret_access_key: credentials are not settings (settings are stored as "
                "Prefect flow parameters); export AWS_SECRET_ACCESS_KEY or use AWS_PROFILE instead"
            )
        return data

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        found = _credential_paths(value, "storage.storage_options")
        if found:
            raise ValueError(
                f"{', '.join(found)}: credentials are not accepted in settings (they would be stored in "
                "the Prefect database); export AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(/ AWS_SESSION_TOKEN) or use AWS_PROFILE, which s3fs reads itself"
            )
        return value

    @field_validator("root")
    @classmethod
    def _no_userinfo(cls, value: str) -> str:
        if _url_has_userinfo(value):
            raise ValueError("storage.root: a URL with user:password@ is not accepted; use AWS_* variables or a profile")
        return value

    def fs_options(self) -> dict[str, Any]:
        """``storage_options`` for fsspec (credentials come from the environment)."""
        return dict(self.storage_options)


class StoreSettings(_Section):
    """Zarr layout: chunk = read unit, shard = write unit (one task owns whole shards)."""

    chunk_rows: int = Field(4096, gt=0)
    shard_rows: int = Field(65536, gt=0)
    #: Embedding chunks: unit-norm float32 compresses ~7% with zstd at twice the write cost
    #: (docs/performance.md), so chunks are stored plain by default.
    compressor: Literal["zstd", "none"] = "none"
    output_dtype: Literal["float32", "float16"] = "float32"


class CorpusSettings(_Section):
    """How raw corpora are read and split into shards."""

    text_field: str = "text"
    id_field: str | None = "id"
    #: clip-retrieval metadata: "auto" (id, key, image_path, url), a column name, or "row-number"
    embedding_ids: str = "auto"
    items_per_shard: int = Field(4096, gt=0)
    max_failure_rate: float = Field(0.01, ge=0.0, le=1.0, json_schema_extra=EXECUTION)


class EmbedSettings(_Section):
    """open_clip encoder. ``pretrained`` is a tag (needs network once) or a local checkpoint path."""

    model: str = "aniso-demo-tiny"
    pretrained: str | None = "demo"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=EXECUTION)
    require_gpu: bool = Field(False, json_schema_extra=EXECUTION)
    batch_size: int = Field(256, gt=0, json_schema_extra=EXECUTION)
    decode_workers: int = Field(2, ge=0, json_schema_extra=EXECUTION)


class MethodSettings(_Section):
    """Which aligner runs and its hyper-parameters, validated against the method's own
    parameter model (:mod:`aniso.methods.params`) when the settings load."""

    name: str = "anisoalign"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_method(self) -> MethodSettings:
        try:
            validate_method(self.name, self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class FitSettings(_Section):
    """Fitting pass: sampling for methods that train on rows."""

    seed: int = 0
    sample_size: int | None = None  # None: the method's own default


class GateSettings(_Section):
    """Quality-gate bounds (a failed gate blocks publication)."""

    centroid_residual_max: float = 1e-3
    norm_tolerance: float = 1e-3
    knn_overlap_min: float = 0.3
    spearman_min: float = 0.5
    sample_rows: int = Field(2048, gt=10)
    seed: int = 0
    #: Image rows (and as many substitutes) for the reported, not gated, distribution metrics.
    distribution_sample_rows: int = Field(1024, gt=10)
    #: Random pairs for the pairwise-cosine Spearman gate (all pairs when the sample has fewer).
    spearman_pairs: int = Field(20_000, gt=100)
    #: At most this many read chunks per store are read to draw a sample (0: no limit).
    sample_chunks: int = Field(16, ge=0)
    #: The suites file (default ``conf/gates.yaml``); bounds written ``"{field}"`` come from here.
    suite_file: str | None = None
    #: Write ``quality/report.html`` and ``report.json`` beside ``gates.json``.
    report: bool = True


class ClusterSettings(_Section):
    """Dask: a local cluster by default, an existing scheduler when ``address`` is set."""

    address: str | None = None
    cluster_class: str | None = None  # e.g. "dask_cuda.LocalCUDACluster"
    n_workers: int = Field(2, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    processes: bool = False
    #: Address of the Dask dashboard of a local cluster (e.g. ``":8787"``); off when unset.
    dashboard: str | None = None
    cluster_kwargs: dict[str, Any] = Field(default_factory=dict)


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="ANISO_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    storage: StorageSettings = Field(default_factory=StorageSettings, json_schema_extra=EXECUTION)
    store: StoreSettings = Field(default_factory=StoreSettings)
    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    method: MethodSettings = Field(default_factory=MethodSettings)
    fit: FitSettings = Field(default_factory=FitSettings)
    gates: GateSettings = Field(default_factory=GateSettings, json_schema_extra=EXECUTION)
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
def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
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


def _is_text_setting(dotted: str) -> bool:
    """Whether ``dotted`` names a plain string setting (``storage.dataset``, ``storage.root``)."""
    model: type[BaseModel] = Settings
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


def parse_value(dotted: str, raw: str) -> Any:
    """The value of a ``--set`` / ``ANISO_`` string for setting ``dotted``.

    A string setting takes the text verbatim (``2024``, ``no`` and ``x #1`` stay strings; YAML
    would read an int, ``False`` and ``x``); quotes around it are removed. Any other setting
    reads the text as a YAML scalar or flow collection (``64``, ``true``, ``null``, ``[a, b]``).
    """
    if raw == "":
        return None
    if _is_text_setting(dotted):
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        return raw[1:-1] if quoted else raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith("ANISO_") or key == "ANISO_PROFILE" or "__" not in key:
            continue
        dotted = key[len("ANISO_") :].lower()
        _set_path(out, dotted, parse_value(dotted, raw))
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["embed.batch_size=64", ...]`` → nested dict (each value read by :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(out, key.strip(), parse_value(key.strip(), raw))
    return out


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
    data = read_yaml(CONF_DIR / "default.yaml") if (CONF_DIR / "default.yaml").exists() else {}
    profile = profile or environ.get("ANISO_PROFILE")
    if profile and profile != "default":
        data = _deep_merge(data, read_yaml(CONF_DIR / f"{profile}.yaml"))
    if config_file:
        data = _deep_merge(data, read_yaml(Path(config_file)))
    if values:
        data = _deep_merge(data, values)
    data = _deep_merge(data, _env_overrides(environ))
    data = _deep_merge(data, parse_overrides(overrides))
    data = _deep_merge(data, dict(options or {}))
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """One line for a settings ValidationError; each problem names its ``section.field``."""
    problems = []
    for err in exc.errors():
        if err["type"] == "value_error" and "error" in err.get("ctx", {}):
            problems.append(str(err["ctx"]["error"]))  # our validators name the field themselves
        else:
            problems.append(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    return "; ".join(problems)


# -- hashing --------------------------------------------------------------------------------
def _semantic(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("execution"):
            continue
        value = getattr(model, name)
        out[name] = _semantic(value) if isinstance(value, BaseModel) else value
    return out


def semantic_config(settings: Settings) -> dict[str, Any]:
    """The part of the settings that determines the result (no execution details, no secrets).

    Fields marked ``EXECUTION`` are left out, and so are a method's execution-only parameters
    (``execution_params`` in :data:`aniso.methods.table.METHODS`, e.g. AnisoAlign's
    ``torch_threads``).
    """
    out = _semantic(settings)
    out["method"]["params"] = semantic_params(settings.method.name, settings.method.params)
    return out


def config_hash(settings: Settings, length: int = 16) -> str:
    """Stable hash of :func:`semantic_config` (canonical JSON, sorted keys)."""
    canonical = json.dumps(semantic_config(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
