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
        cluster={"n_workers": 7},
        embed={"batch_size": 3},
        storage={"root": "s3://elsewhere", "storage_options": {"key": "k"}, "aws_secret_access_key": "s3cr3t"},
    )
    assert config_hash(base) == config_hash(other)
    assert "s3cr3t" not in repr(semantic_config(other))
    assert config_hash(base) != config_hash(Settings(method={"name": "centroid"}))
    assert config_hash(base) != config_hash(Settings(fit={"seed": 1}))
