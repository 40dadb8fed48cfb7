"""Secrets: a credential passed each supported way never appears in the Prefect database files,
the run's logs (local records and those sent to the API), flow parameters, or anything written
under the storage root (manifests, run.json, gates.json, reports, markers)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest

from aniso._fs import join_url, open_url
from aniso.config import load_settings
from aniso.errors import ConfigError
from aniso.flows.produce import produce

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.s3]


def _fresh_bucket(endpoint):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"sec-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}"


def _database_files() -> list[Path]:
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url.get_secret_value()
    db = Path(url.split("///", 1)[1])
    return [p for p in db.parent.glob(db.name + "*") if p.is_file()]


def _flow_runs_and_logs():
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs()
            logs = await client.read_logs()
            return runs, logs

    return asyncio.run(read())


def _storage_bytes(bucket, endpoint) -> bytes:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    return b"".join(fs.cat_file(path) for path in fs.find(bucket))


def _credentials_file(tmp_path, access, secret, token):
    path = tmp_path / "credentials"
    path.write_text(f"[aniso-test]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"
                    f"aws_session_token = {token}\n")
    return path


@pytest.mark.parametrize("way", ["environment", "profile", "sse-c key as ${ENV_VAR}"])
def test_secret_never_stored(tmp_path, gap, moto_server, monkeypatch, caplog, way):
    secret = f"SECRET-{uuid.uuid4().hex}"
    token = f"TOKEN-{uuid.uuid4().hex}"
    access = f"AKIA{uuid.uuid4().hex[:16].upper()}"
    sse_key = uuid.uuid4().hex  # 32 bytes: an AES-256 customer key
    extra = []
    if way.startswith("sse-c"):
        # the settings (a flow parameter) hold only the variable's name; s3fs gets the key
        monkeypatch.setenv("ANISO_TEST_SSE_KEY", sse_key)
        extra = ["storage.storage_options.s3_additional_kwargs.SSECustomerAlgorithm=AES256",
                 "storage.storage_options.s3_additional_kwargs.SSECustomerKey=${ANISO_TEST_SSE_KEY}"]
    if way != "profile":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    else:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(_credentials_file(tmp_path, access, secret, token)))
        monkeypatch.setenv("AWS_PROFILE", "aniso-test")
    bucket = _fresh_bucket(moto_server)
    options = {"endpoint_url": moto_server}
    paths = {}
    for name, array in (("text", gap.text), ("image", gap.image)):
        paths[name] = join_url(bucket, "in", f"{name}.npy")
        with open_url(paths[name], "wb", options) as f:
            np.save(f, array)
    settings = load_settings(profile="ci", environ={}, overrides=[
        f"storage.root={bucket}/store", "storage.dataset=sec", "method.name=realign",
        f"storage.storage_options.endpoint_url={moto_server}", "gates.report=true", *extra])

    # everything `--verbose` shows (INFO); botocore's own DEBUG logging prints signed request
    # headers, a level aniso never enables
    caplog.set_level(logging.INFO)
    result = produce(text=paths["text"], image=paths["image"], settings=settings)
    assert result["gates"]["passed"]

    needles = [secret, token, sse_key]
    stored = _storage_bytes(bucket, moto_server)
    assert b"manifest" in stored or len(stored) > 1000  # the check below reads real data
    runs, logs = _flow_runs_and_logs()
    assert any(r.name == "produce-sec" for r in runs)
    texts = {
        "storage root (manifests, run.json, gates.json, reports, markers)": stored.decode("latin-1"),
        "Prefect database files": b"".join(p.read_bytes() for p in _database_files()).decode("latin-1"),
        "flow run parameters": repr([r.parameters for r in runs]),
        "logs sent to the Prefect API": "\n".join(log.message for log in logs),
        "local log records": caplog.text,
    }
    for where, text in texts.items():
        for needle in needles:
            assert needle not in text, f"a credential appears in the {where}"


def test_a_secret_given_as_a_setting_is_refused_without_echo():
    secret = f"SECRET-{uuid.uuid4().hex}"
    for source in ({"overrides": [f"storage.storage_options.secret={secret}"]},
                   {"environ": {"ANISO_STORAGE__STORAGE_OPTIONS__KEY": secret}},
                   {"environ": {"ANISO_STORAGE__AWS_SECRET_ACCESS_KEY": secret}}):
        with pytest.raises(ConfigError, match="credentials") as info:
            load_settings(**{"environ": {}, **source})
        assert secret not in str(info.value)
