"""Settings tree: profiles, environment, --set overrides, and a hash of the semantic part only."""

from __future__ import annotations

import pytest

from aniso.config import Settings, config_hash, load_settings, semantic_config
from aniso.errors import ConfigError


def test_defaults_come_from_the_default_profile():
    settings = load_settings(environ={})
    assert settings.storage.root == ".aniso-demo"
    assert settings.cluster.address is None


def test_precedence_yaml_env_then_set(tmp_path):
    config = tmp_path / "x.yaml"
    config.write_text("embed:\n  batch_size: 8\nmethod:\n  name: centroid\n")
    env = {"ANISO_EMBED__BATCH_SIZE": "16", "ANISO_STORE__SHARD_ROWS": "8192"}
    settings = load_settings(config_file=config, environ=env, overrides=["embed.batch_size=32"])
    assert settings.method.name == "centroid"  # from the file
    assert settings.store.shard_rows == 8192  # from the environment
    assert settings.embed.batch_size == 32  # --set wins


def test_profile_is_layered(tmp_path):
    settings = load_settings(profile="ci", environ={})
    assert settings.store.shard_rows <= load_settings(environ={}).store.shard_rows


def test_invalid_values_name_the_field():
    with pytest.raises(ConfigError, match="store.shard_rows"):
        load_settings(overrides=["store.shard_rows=-1"], environ={})
    with pytest.raises(ConfigError, match="key=value"):
        load_settings(overrides=["nonsense"], environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(profile="no-such-profile", environ={})


def test_hash_ignores_execution_details_and_secrets():
    base = Settings()
    other = Settings(
        cluster={"n_workers": 3},
        embed={"batch_size": 3},
        storage={"root": "s3://elsewhere", "storage_options": {"endpoint_url": "http://x:9000"}},
    )
    assert config_hash(base) == config_hash(other)
    assert config_hash(base) != config_hash(Settings(method={"name": "centroid"}))
    assert config_hash(base) != config_hash(Settings(fit={"seed": 1}))


# -- every field on one side: result (run key) or execution -----------------------------------
#: Each leaf field of the settings, a different valid value, and whether it may change the
#: result. A new field must be added here (the test below fails until it is).
FIELDS = {
    "storage.root": ("s3://elsewhere/x", False),
    "storage.dataset": ("other", False),  # a location, like root: runs are keyed inside it
    "storage.storage_options": ({"endpoint_url": "http://127.0.0.1:1"}, False),
    "store.chunk_rows": (512, True),  # the published layout
    "store.shard_rows": (8192, True),
    "store.compressor": ("zstd", True),
    "store.output_dtype": ("float16", True),
    "corpus.text_field": ("caption", True),
    "corpus.id_field": ("key", True),
    "corpus.embedding_ids": ("row-number", True),
    "corpus.items_per_shard": (1024, True),
    "corpus.tar_ids": ("path", True),
    "corpus.max_failure_rate": (0.5, False),
    "embed.model": ("ViT-B-32", True),
    "embed.pretrained": ("laion2b_s34b_b79k", True),
    "embed.precision": ("fp16", True),
    "embed.device": ("cpu", False),
    "embed.require_gpu": (True, False),
    "embed.batch_size": (7, False),
    "embed.decode_workers": (5, False),
    "method.name": ("realign", True),
    "method.params": ({"strength": 0.5}, True),
    "method.model": ("latest", False),
    "method.refit": ("on_drift", False),  # the model's checksum keys a frozen-model run instead
    "publish.allow_schema_change": (True, False),
    "fit.seed": (3, True),
    "fit.sample_size": (999, True),
    "gates.centroid_residual_max": (0.5, False),
    "gates.norm_tolerance": (0.5, False),
    "gates.knn_overlap_min": (0.1, False),
    "gates.spearman_min": (0.1, False),
    "gates.sample_rows": (99, False),
    "gates.seed": (4, False),
    "gates.distribution_sample_rows": (99, False),
    "gates.spearman_pairs": (999, False),
    "gates.frozen_centroid_residual_max": (0.1, False),
    "gates.sample_chunks": (3, False),
    "gates.suite_file": ("other.yaml", False),
    "gates.report": (False, False),
    "cluster.address": ("tcp://127.0.0.1:8786", False),
    "cluster.cluster_class": ("dask_cuda.LocalCUDACluster", False),
    "cluster.n_workers": (4, False),  # a local cluster takes at most max(4, 2 x cores) threads
    "cluster.threads_per_worker": (2, False),
    "cluster.processes": (True, False),
    "cluster.cluster_kwargs": ({"memory_limit": "1GB"}, False),
    "cluster.dashboard": (":8787", False),
    "cluster.wait_timeout": (5.0, False),
}

#: Parameters of AnisoAlign's removed learned stages that only changed how a fit ran: settings that still
#: name them (dropped, as inert, when they load) keep the run key they had.
ANISOALIGN_EXECUTION = {"torch_threads": 3, "device": "cpu"}


def _leaves(model_cls, prefix=""):
    from pydantic import BaseModel

    out = []
    for name, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _leaves(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_settings_field_is_classified():
    assert sorted(_leaves(Settings)) == sorted(FIELDS)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_field_changes_the_run_key_only_when_semantic(field):
    from aniso.io.layout import run_key

    value, semantic = FIELDS[field]
    section, name = field.split(".")
    base = Settings()
    changed = Settings(**{section: {**getattr(base, section).model_dump(), name: value}})
    assert getattr(getattr(changed, section), name) == value
    key = lambda s: run_key({"text": "t", "image": "i"}, semantic_config(s), "v")  # noqa: E731
    assert (config_hash(changed) != config_hash(base)) is semantic, field
    assert (key(changed) != key(base)) is semantic, field


def test_a_field_added_later_keeps_the_config_hash_at_its_default():
    """``corpus.tar_ids`` came after configurations were hashed: at its default it is not in the
    hashed config (settings that do not use it hash as before), and any other value is."""
    assert "tar_ids" not in semantic_config(Settings())["corpus"]
    assert semantic_config(Settings(corpus={"tar_ids": "path"}))["corpus"]["tar_ids"] == "path"
    assert config_hash(Settings(corpus={"tar_ids": "key"})) == config_hash(Settings())


@pytest.mark.parametrize("param", sorted(ANISOALIGN_EXECUTION))
def test_execution_parameters_of_a_method_stay_out_of_the_run_key(param):
    base = Settings(method={"name": "anisoalign", "params": {"strength": 0.3}})
    threads = Settings(method={"name": "anisoalign", "params": {"strength": 0.3, param: ANISOALIGN_EXECUTION[param]}})
    assert config_hash(base) == config_hash(threads)
    assert config_hash(base) != config_hash(Settings(method={"name": "anisoalign", "params": {"strength": 0.4}}))


def test_every_method_parameter_is_classified():
    """Each method's parameter model is known to the settings, and only the listed
    execution parameters are left out of the run key."""
    from aniso.methods.table import METHODS

    assert {n: e.execution_params for n, e in METHODS.items() if e.execution_params} == {
        "anisoalign": frozenset(ANISOALIGN_EXECUTION)}
    for name, entry in METHODS.items():
        model = entry.params_model()
        for param in model.model_fields:
            default = model.model_fields[param].default
            params = {param: default}
            s = Settings(method={"name": name, "params": params})
            kept = param in semantic_config(s)["method"]["params"]
            assert kept is (param not in entry.execution_params), (name, param)


# -- method name and parameters validated at load ---------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.name=anisoalgn"], r"method\.name: unknown method 'anisoalgn'; available: .*anisoalign"),
        (["method.params.strenght=0.5"], r"method\.params\.strenght: Extra inputs are not permitted \(did you mean strength\?\)"),
        (["method.params.r=3"], r"method\.params\.r: .*positive even"),
        (["method.name=moment", "method.params.shrinkage=2"], r"method\.params\.shrinkage: .*less than or equal to 1"),
        (["method.name=realign", "method.params.noise=0.1"], r"method\.params\.noise: Extra inputs"),
        (["method.params.calibrate=maybe"], r"method\.params\.calibrate: expected true or false"),
    ],
)
def test_method_and_params_are_validated_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides, environ={})


def test_each_aligner_takes_its_parameter_model_from_the_method_table():
    from aniso.methods import aligner_class, available_aligners
    from aniso.methods.params import MethodParams
    from aniso.methods.table import METHODS

    assert available_aligners() == list(METHODS)
    for name, entry in METHODS.items():
        cls = aligner_class(name)
        assert cls.name == name and cls.__name__ == entry.class_name
        assert cls.Params is entry.params_model() and issubclass(cls.Params, MethodParams)
        assert cls.statistics == entry.statistics


def test_valid_method_params_load():
    settings = load_settings(overrides=["method.name=c3", "method.params.noise=0.1", "method.params.calibrate=true"],
                             environ={})
    assert settings.method.params == {"noise": 0.1, "calibrate": True}


# -- secrets are never settings ---------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, environ, message",
    [
        (["storage.storage_options.secret=s3cr3t"], {}, r"storage\.storage_options\.secret: credentials"),
        (["storage.storage_options.key=AKIA"], {}, r"storage\.storage_options\.key: credentials"),
        (["storage.storage_options.client_kwargs.aws_secret_access_key=x"], {},
         r"storage\.storage_options\.client_kwargs\.aws_secret_access_key"),
        ([], {"ANISO_STORAGE__STORAGE_OPTIONS__TOKEN": "x"}, r"storage\.storage_options\.token"),
        ([], {"ANISO_STORAGE__AWS_SECRET_ACCESS_KEY": "x"}, r"storage\.aws_secret_access_key: .*AWS_SECRET_ACCESS_KEY"),
        (["storage.root=s3://AKIA:s3cr3t@bucket/x"], {}, r"storage\.root: credentials are not accepted"),
    ],
)
def test_credentials_in_settings_are_rejected(overrides, environ, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(overrides=overrides, environ=environ)
    assert "s3cr3t" not in str(info.value)


def test_s3_profile_defers_the_endpoint_to_the_environment():
    """conf/s3.yaml sets no endpoint_url: AWS_ENDPOINT_URL (read by botocore) decides."""
    settings = load_settings(profile="s3", environ={})
    assert "endpoint_url" not in settings.storage.storage_options
    assert settings.storage.root.startswith("s3://")


@pytest.mark.parametrize("value", ["0", "-1", "3601", "soon"])
def test_cluster_wait_timeout_is_bounded(value):
    with pytest.raises(ConfigError, match="cluster.wait_timeout"):
        load_settings(overrides=[f"cluster.wait_timeout={value}"], environ={})
