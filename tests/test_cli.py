"""The ``aniso`` CLI: exit codes and one-line reasons (typer's CliRunner, real flows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aniso.flows.cli import app

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def inputs(tmp_path, gap):
    np.save(tmp_path / "text.npy", gap.text)
    np.save(tmp_path / "image.npy", gap.image)
    return tmp_path


def _produce(inputs, *extra):
    args = ["produce", "--text", str(inputs / "text.npy"), "--image", str(inputs / "image.npy"),
            "--out", str(inputs / "out"), "--dataset", "cli", "--profile", "ci", "--set", "method.name=realign", *extra]
    return CliRunner().invoke(app, args)


def test_produce_publishes_and_exits_zero(inputs):
    result = _produce(inputs)
    assert result.exit_code == 0, result.output
    assert "published cli version" in result.output and "centroid_residual" in result.output
    # every command takes the storage root as ROOT (show's --out stays accepted)
    shown = CliRunner().invoke(app, ["show", str(inputs / "out"), "--dataset", "cli"])
    assert shown.exit_code == 0 and "2000 x 64" in shown.output and "gates:" in shown.output
    full = CliRunner().invoke(app, ["show", "--out", str(inputs / "out"), "--dataset", "cli", "--json"])
    assert full.exit_code == 0 and '"n_rows": 2000' in full.output
    version = json.loads(full.output)["version"]
    pinned = CliRunner().invoke(app, ["show", str(inputs / "out"), "--dataset", "cli", "--version", version])
    assert pinned.exit_code == 0 and version in pinned.output
    for args, message in ((["show", "--dataset", "cli"], "needs the storage root"),
                          (["show", str(inputs / "out"), "--out", str(inputs), "--dataset", "cli"], "two storage roots")):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 2 and message in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output
    for command in ("show", "verify", "gc", "export", "produce", "embed", "demo"):
        usage = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"}).output
        line = next(x for x in usage.splitlines() if "Usage:" in x)
        assert line.split()[-1] in ("[ROOT]", "{ROOT}"), (command, line)

    # diagnose reads substitutes from the published version: ROOT --dataset [--version], or its folder
    base = ["diagnose", "--text", str(inputs / "text.npy"), "--image", str(inputs / "image.npy"),
            "--max-rows", "300", "--format", "json"]
    by_root = CliRunner().invoke(app, [*base, "--substitutes", str(inputs / "out"), "--dataset", "cli"])
    assert by_root.exit_code == 0, by_root.output
    metrics = json.loads(by_root.output)
    assert metrics["raw text"]["centroid_residual"] > 0.5 and metrics["substitutes"]["centroid_residual"] < 0.1
    folder = str(inputs / "out" / "cli" / "published" / version)
    by_folder = CliRunner().invoke(app, [*base, "--substitutes", folder])
    assert by_folder.exit_code == 0 and json.loads(by_folder.output) == metrics, by_folder.output
    pinned = CliRunner().invoke(app, [*base, "--substitutes", str(inputs / "out"), "--dataset", "cli", "--version", version])
    assert pinned.exit_code == 0 and json.loads(pinned.output) == metrics
    missing = CliRunner().invoke(app, [*base, "--substitutes", str(inputs / "out"), "--dataset", "cli", "--version", "nope"])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1, missing.output


def test_bad_input_exits_two_with_one_line(inputs, gap):
    np.save(inputs / "image.npy", gap.image[:, :10])
    result = _produce(inputs)
    assert result.exit_code == 2
    assert "d=64 but image embeddings" in result.output


def test_failed_gate_exits_three(inputs):
    result = _produce(inputs, "--set", "method.name=identity")
    assert result.exit_code == 3
    assert "centroid_residual observed" in result.output


def test_bad_setting_exits_two(inputs):
    result = _produce(inputs, "--set", "store.shard_rows=zero")
    assert result.exit_code == 2 and "store.shard_rows" in result.output


def test_diagnose_prints_one_table(inputs, gap):
    from aniso.methods import get_aligner

    np.save(inputs / "subs.npy", get_aligner("realign").fit(gap.text, gap.image).transform(gap.text))
    result = CliRunner().invoke(app, ["diagnose", "--text", str(inputs / "text.npy"), "--image", str(inputs / "image.npy"),
                                      "--substitutes", str(inputs / "subs.npy"), "--pairs", "--max-rows", "800",
                                      "--format", "markdown"])
    assert result.exit_code == 0, result.output
    header, _, raw, subs = result.output.strip().splitlines()[-4:]
    assert "centroid_residual" in header and "A_r_baseline" in header and "R@1" in header
    gap_raw = float(raw.split("|")[2])
    gap_subs = float(subs.split("|")[2])
    assert gap_raw > 0.5 and gap_subs < 0.05  # the planted gap, then closed (up to sampling noise)


def test_diagnose_default_table_fits_100_columns_and_other_formats(inputs):
    import csv
    import io
    import json

    args = ["diagnose", "--text", str(inputs / "text.npy"), "--image", str(inputs / "image.npy"), "--max-rows", "300"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    lines = table.output.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 100
    row = next(line for line in lines if line.startswith("centroid_residual"))
    assert float(row.split()[1]) > 0.5 and "gap left" in row  # the planted gap, with its meaning
    as_json = json.loads(CliRunner().invoke(app, [*args, "--format", "json"]).output)
    assert as_json["raw text"]["centroid_residual"] == pytest.approx(float(row.split()[1]), rel=1e-2)
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(app, [*args, "--format", "csv"]).output)))
    assert {r["metric"] for r in rows} == set(as_json["raw text"]) and all(r["input"] == "raw text" for r in rows)
    bad = CliRunner().invoke(app, [*args, "--format", "xml"])
    assert bad.exit_code == 2 and "xml" in bad.output


def test_help_shows_defaults_without_placeholders_and_version():
    import re

    result = CliRunner().invoke(app, ["produce", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output and "<str>" not in result.output
    assert "default: anisoalign" in re.sub(r"\s+", " ", result.output.replace("│", " "))
    top = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert "Exit codes: 0 success" in top.output and "2 bad input or settings" in re.sub(r"\s+", " ", top.output)
    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and re.match(r"aniso \d+\.\d+\.\d+ \(code ", version.output)
