"""Preflight: expected failures are one line and exit 2, fast, before any heavy work.

Every case runs the real CLI (typer's CliRunner) on real files, a real loopback S3 server
(moto), a closed port and a port that accepts connections but never answers.
"""

from __future__ import annotations

import gc
import socket
import time
import uuid

import numpy as np
import pytest
from typer.testing import CliRunner

from aniso.flows.cli import app
from aniso.stages.preflight import MIN_ROWS

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: What the issue allows for any expected failure, endpoint down included.
LIMIT_S = 30


@pytest.fixture
def inputs(tmp_path, gap):
    np.save(tmp_path / "text.npy", gap.text)
    np.save(tmp_path / "image.npy", gap.image)
    return tmp_path


def _produce(inputs, out, *extra, text="text.npy", image="image.npy"):
    args = ["produce", "--text", str(inputs / text), "--image", str(inputs / image), "--out", out,
            "--dataset", "pf", "--profile", "ci", "--set", "method.name=realign", *extra]
    # finalise what earlier tests left behind first: an S3 filesystem collected during the run
    # logs "Unclosed client session" into the captured output of this one
    gc.collect()
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    return result, time.perf_counter() - started


def _assert_one_line_exit_2(result, seconds, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("aniso: error: ")]
    # one error line; anything else is an INFO line (the run's announcement; the loopback S3
    # server's access log in these tests), never a traceback or another error
    assert len(errors) == 1, result.output
    assert all(line in errors or " INFO " in line for line in lines), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert seconds < LIMIT_S, f"took {seconds:.1f} s"


def _nothing_written(out):
    from pathlib import Path

    runs = list(Path(out).glob("**/runs/*")) if Path(out).exists() else []
    stores = list(Path(out).glob("**/*.zarr")) if Path(out).exists() else []
    assert not runs and not stores


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--method", "anisoalgn"], ["method.name: unknown method 'anisoalgn'", "anisoalign"]),
        (["--set", "method.name=anisoalign", "--set", "method.params.strenght=0.5"], ["method.params.strenght"]),
        (["--set", "storage.storage_options.secret=abc"], ["storage.storage_options.secret", "AWS_SECRET_ACCESS_KEY"]),
    ],
)
def test_bad_settings_fail_at_load(inputs, extra, needles):
    out = str(inputs / "out")
    result, seconds = _produce(inputs, out, *extra)
    _assert_one_line_exit_2(result, seconds, *needles)
    _nothing_written(out)


# -- inputs -------------------------------------------------------------------------------------
def test_missing_input(inputs):
    result, seconds = _produce(inputs, str(inputs / "out"), text="nope.npy")
    _assert_one_line_exit_2(result, seconds, "text input", "nope.npy", "does not exist")


@pytest.mark.parametrize("rows", [1, 5, MIN_ROWS - 1])
def test_too_small_inputs_state_the_minimum(inputs, gap, rows):
    np.save(inputs / "small.npy", gap.text[:rows])
    result, seconds = _produce(inputs, str(inputs / "out"), text="small.npy")
    _assert_one_line_exit_2(result, seconds, f"has {rows} row(s)", f"at least {MIN_ROWS}")
    _nothing_written(str(inputs / "out"))


def test_dimension_mismatch_is_caught_before_ingest(inputs, gap):
    np.save(inputs / "narrow.npy", gap.image[:, :10])
    result, seconds = _produce(inputs, str(inputs / "out"), image="narrow.npy")
    _assert_one_line_exit_2(result, seconds, "d=64 but image embeddings")
    _nothing_written(str(inputs / "out"))


# -- a frozen model ---------------------------------------------------------------------------------
def test_a_model_of_the_removed_learned_stages_is_refused_before_any_work(inputs, gap):
    """``--model`` naming a model saved with AnisoAlign's learned stages (removed): one line at
    preflight that says why, nothing written (it used to fail only when the apply stage loaded it)."""
    import json

    from aniso.methods import get_aligner

    where = inputs / "old-model"
    get_aligner("anisoalign").fit(gap.text, gap.image).save(str(where))
    meta = json.loads((where / "aligner.json").read_text())
    meta["params"] = {**meta["params"], "learned": True, "hidden": 512}  # as an earlier version saved it
    (where / "aligner.json").write_text(json.dumps(meta))
    out = str(inputs / "out")
    result, seconds = _produce(inputs, out, "--set", "method.name=anisoalign", "--model", str(where),
                               "--set", "corpus.embedding_ids=row-number")
    _assert_one_line_exit_2(result, seconds, f"--model {where}", "learned stages", "refit with learned: false")
    _nothing_written(out)


# -- output root: local -------------------------------------------------------------------------
def test_output_under_a_regular_file(inputs):
    (inputs / "afile").write_text("x")
    result, seconds = _produce(inputs, str(inputs / "afile" / "out"))
    _assert_one_line_exit_2(result, seconds, "storage.root", "afile", "regular file")


# -- output root: object storage ----------------------------------------------------------------
@pytest.mark.s3
def test_missing_bucket(inputs, moto_server):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    result, seconds = _produce(inputs, f"s3://{bucket}/x", "--set", f"storage.storage_options.endpoint_url={moto_server}")
    _assert_one_line_exit_2(result, seconds, f"storage.root s3://{bucket}/x", "does not exist")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.s3
def test_endpoint_down(inputs):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result, seconds = _produce(inputs, "s3://bucket/x", "--set", f"storage.storage_options.endpoint_url={endpoint}")
    _assert_one_line_exit_2(result, seconds, "storage.root s3://bucket/x")


@pytest.mark.s3
def test_endpoint_that_never_answers(inputs):
    """A port that accepts connections (kernel backlog) but never replies: bounded by timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result, seconds = _produce(inputs, "s3://bucket/x", "--set", f"storage.storage_options.endpoint_url={endpoint}")
    _assert_one_line_exit_2(result, seconds, "storage.root s3://bucket/x")


@pytest.mark.s3
def test_input_on_an_unreachable_endpoint(inputs):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    args = ["produce", "--text", "s3://bucket/in/text.npy", "--image", str(inputs / "image.npy"),
            "--out", str(inputs / "out"), "--profile", "ci", "--set", f"storage.storage_options.endpoint_url={endpoint}"]
    # finalise what earlier tests left behind first: an S3 filesystem collected during the run
    # logs "Unclosed client session" into the captured output of this one
    gc.collect()
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    _assert_one_line_exit_2(result, time.perf_counter() - started, "text input", "s3://bucket/in/text.npy")


@pytest.mark.s3
def test_s3_profile_honours_aws_endpoint_url(inputs, moto_server, monkeypatch):
    """The README's S3 recipe: ``--profile s3`` with AWS_ENDPOINT_URL and AWS_* credentials."""
    import s3fs

    from aniso.published.dataset import open_published

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"aniso-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=moto_server).mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=moto_server)
    for name in ("text", "image"):
        fs.put(str(inputs / f"{name}.npy"), f"{bucket}/in/{name}.npy")
    args = ["produce", "--text", f"s3://{bucket}/in/text.npy", "--image", f"s3://{bucket}/in/image.npy",
            "--out", f"s3://{bucket}/store", "--dataset", "recipe", "--profile", "s3",
            "--set", "method.name=realign", "--set", "store.chunk_rows=256", "--set", "store.shard_rows=1024"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    published = open_published(f"s3://{bucket}/store", "recipe", storage_options={"endpoint_url": moto_server})
    assert published.manifest["n_rows"] == 2000
    s3fs.S3FileSystem.clear_instance_cache()


# -- failures inside the flow: still one line, no traceback (a real process, real stderr) --------
@pytest.mark.slow
def test_failure_inside_the_flow_prints_no_traceback(inputs, gap):
    """Duplicate ids are found by the ingest stage (inside the flow): exit 2, one line on stderr."""
    import subprocess
    import sys

    ids = np.tile(np.arange(len(gap.text) // 2), 2).astype(str)
    folder = inputs / "dup"
    (folder / "text_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "text_emb" / "text_emb_0.npy", gap.text)
    import pandas as pd

    pd.DataFrame({"id": ids}).to_parquet(folder / "metadata" / "metadata_0.parquet")
    result = subprocess.run(
        [sys.executable, "-m", "aniso.flows.cli", "produce", "--text", str(folder / "text_emb"),
         "--image", str(inputs / "image.npy"), "--out", str(inputs / "out"), "--profile", "ci",
         "--set", "method.name=realign"],
        capture_output=True, text=True, timeout=600, cwd=inputs,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("aniso: error: ")]
    assert len(errors) == 1 and "appears at rows" in errors[0], result.stderr[-3000:]
