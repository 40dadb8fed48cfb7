"""Bad settings, names, secrets and CLI arguments: each refused with one line that names the
culprit, the right exit code, and nothing created or changed under the storage root.

Sections: settings bounds (every numeric field, through ``--set``, ``ANISO_`` and the CLI) ·
dataset and root names · secrets in settings and input URLs · ``diagnose`` arguments · storage
failures (disk full).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from aniso.config import Settings, load_settings
from aniso.errors import ConfigError, InputError
from aniso.flows.cli import app


def _tree(path: Path) -> list[str]:
    """Every file and folder under ``path`` (what a refused run must leave unchanged)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``path``."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def published(tmp_path_factory, gap, prefect_harness):
    """A root holding a published dataset ``pub``, which every refused command below must leave
    exactly as it was."""
    folder = tmp_path_factory.mktemp("published")
    np.save(folder / "text.npy", gap.text[:600])
    np.save(folder / "image.npy", gap.image[:600])
    result = CliRunner().invoke(app, ["produce", "--text", str(folder / "text.npy"), "--image", str(folder / "image.npy"),
                                      "--out", str(folder / "root"), "--dataset", "pub", "--profile", "ci",
                                      "--method", "realign"])
    assert result.exit_code == 0, result.output
    return folder


def _refused(published: Path, args: list[str], code: int = 2) -> tuple[str, str]:
    """Run the CLI with ``args`` against the published root; check it exits ``code`` with one
    error line and no traceback, and that nothing under or beside the root changed. Returns the
    error line and the whole output."""
    before, beside = _snapshot(published), _tree(published.parent)
    result = CliRunner().invoke(app, [a.replace("ROOT", str(published / "root")) for a in args])
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("aniso: error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert _snapshot(published) == before and _tree(published.parent) == beside
    return errors[0], result.output


def _leaf_fields(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, object]:
    """``section.field`` → annotation for every leaf setting."""
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(_leaf_fields(annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = annotation
    return out


# -- settings bounds ---------------------------------------------------------------------------
#: (setting, a value out of bounds as typed on the command line, what the message says).
OUT_OF_BOUNDS = [
    ("store.chunk_rows", "0", "greater than 0"),
    ("store.chunk_rows", "-1", "greater than 0"),
    ("store.chunk_rows", "262145", "less than or equal to 262144"),
    ("store.shard_rows", "0", "greater than 0"),
    ("store.shard_rows", "1048577", "less than or equal to 1048576"),
    ("corpus.items_per_shard", "0", "greater than 0"),
    ("corpus.items_per_shard", "1048577", "less than or equal to 1048576"),
    ("corpus.max_failure_rate", "-0.1", "greater than or equal to 0"),
    ("corpus.max_failure_rate", "1.5", "less than or equal to 1"),
    ("corpus.max_failure_rate", "nan", "finite"),
    ("corpus.max_failure_rate", ".inf", "finite"),
    ("embed.batch_size", "0", "greater than 0"),
    ("embed.batch_size", "65537", "less than or equal to 65536"),
    ("embed.decode_workers", "-1", "greater than or equal to 0"),
    ("embed.decode_workers", "65", "less than or equal to 64"),
    ("fit.seed", "-1", "greater than or equal to 0"),
    ("fit.seed", "4294967296", "less than or equal to 4294967295"),
    ("fit.sample_size", "-1", "greater than or equal to 2"),
    ("fit.sample_size", "0", "greater than or equal to 2"),
    ("fit.sample_size", "1", "greater than or equal to 2"),
    ("fit.sample_size", "200001", "less than or equal to 200000"),
    ("fit.sample_size", "1e12", "less than or equal to 200000"),
    ("gates.centroid_residual_max", "-0.1", "greater than or equal to 0"),
    ("gates.centroid_residual_max", "2.5", "less than or equal to 2"),
    ("gates.centroid_residual_max", "nan", "finite"),
    ("gates.centroid_residual_max", "inf", "finite"),
    ("gates.norm_tolerance", "0", "greater than 0"),
    ("gates.norm_tolerance", "1.5", "less than or equal to 1"),
    ("gates.norm_tolerance", "NaN", "finite"),
    ("gates.knn_overlap_min", "-0.1", "greater than or equal to 0"),
    ("gates.knn_overlap_min", "1.1", "less than or equal to 1"),
    ("gates.knn_overlap_min", "nan", "finite"),
    ("gates.spearman_min", "-1.5", "greater than or equal to -1"),
    ("gates.spearman_min", "1.5", "less than or equal to 1"),
    ("gates.spearman_min", "nan", "finite"),
    ("gates.spearman_min", "-inf", "finite"),
    ("gates.sample_rows", "10", "greater than 10"),
    ("gates.sample_rows", "16385", "less than or equal to 16384"),
    ("gates.seed", "-1", "greater than or equal to 0"),
    ("gates.seed", "4294967296", "less than or equal to 4294967295"),
    ("gates.distribution_sample_rows", "10", "greater than 10"),
    ("gates.distribution_sample_rows", "8193", "less than or equal to 8192"),
    ("gates.spearman_pairs", "100", "greater than 100"),
    ("gates.spearman_pairs", "500001", "less than or equal to 500000"),
    ("gates.spearman_pairs", "1e12", "less than or equal to 500000"),
    ("gates.spearman_pairs", "1000000000000", "less than or equal to 500000"),
    ("gates.frozen_centroid_residual_max", "-0.1", "greater than or equal to 0"),
    ("gates.frozen_centroid_residual_max", "2.5", "less than or equal to 2"),
    ("gates.frozen_centroid_residual_max", "nan", "finite"),
    ("gates.sample_chunks", "-1", "greater than or equal to 0"),
    ("gates.sample_chunks", "1000001", "less than or equal to 1000000"),
    ("cluster.n_workers", "0", "greater than 0"),
    ("cluster.n_workers", "1025", "less than or equal to 1024"),
    ("cluster.threads_per_worker", "0", "greater than 0"),
    ("cluster.threads_per_worker", "257", "less than or equal to 256"),
    ("cluster.wait_timeout", "0", "greater than 0"),
    ("cluster.wait_timeout", "3601", "less than or equal to 3600"),
]

BOUND_IDS = [f"{field}={value}" for field, value, _ in OUT_OF_BOUNDS]


def test_every_numeric_setting_has_a_lower_and_an_upper_bound_here():
    """A new numeric setting needs its bounds, and a case in OUT_OF_BOUNDS for each."""
    numeric = {name for name, annotation in _leaf_fields().items()
               if annotation in (int, float, int | None, float | None)}
    covered: dict[str, set[str]] = {}
    for field, _, message in OUT_OF_BOUNDS:
        covered.setdefault(field, set()).add("upper" if "less" in message else "lower" if "greater" in message else "nan")
    assert sorted(numeric) == sorted(covered)
    assert all({"upper", "lower"} <= sides for sides in covered.values()), covered


@pytest.mark.parametrize("field, value, message", OUT_OF_BOUNDS, ids=BOUND_IDS)
def test_out_of_bounds_refused_by_set(field, value, message):
    with pytest.raises(ConfigError, match=rf"{field.replace('.', '[.]')}: .*{message}") as info:
        load_settings(overrides=[f"{field}={value}"], environ={})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field, value, message", OUT_OF_BOUNDS, ids=BOUND_IDS)
def test_out_of_bounds_refused_from_the_environment(field, value, message):
    section, name = field.split(".")
    with pytest.raises(ConfigError, match=rf"{field.replace('.', '[.]')}: .*{message}"):
        load_settings(environ={f"ANISO_{section.upper()}__{name.upper()}": value})


@pytest.mark.parametrize("field, value, message", OUT_OF_BOUNDS[::3], ids=BOUND_IDS[::3])
def test_out_of_bounds_exits_two_and_changes_nothing_published(published, field, value, message):
    error, _ = _refused(published, ["produce", "--text", str(published / "text.npy"), "--image",
                                    str(published / "image.npy"), "--out", "ROOT", "--dataset", "pub", "--set",
                                    f"{field}={value}"])
    assert field in error and message in error


@pytest.mark.parametrize("workers, threads", [(64, 1), (3, 3), (1, 64)])
def test_a_local_cluster_larger_than_the_machine_is_refused(workers, threads):
    limit = max(4, 2 * len(os.sched_getaffinity(0)))
    if workers * threads <= limit:
        pytest.skip(f"{workers} x {threads} fits this machine ({limit})")
    with pytest.raises(ConfigError, match=rf"cluster.n_workers x cluster.threads_per_worker = {workers} x {threads} "
                                          rf"exceeds {limit}"):
        load_settings(overrides=[f"cluster.n_workers={workers}", f"cluster.threads_per_worker={threads}"], environ={})
    # a remote scheduler sizes itself: the same numbers are accepted there
    remote = load_settings(overrides=[f"cluster.n_workers={workers}", f"cluster.threads_per_worker={threads}",
                                      "cluster.address=tcp://127.0.0.1:8786"], environ={})
    assert remote.cluster.n_workers == workers


@pytest.mark.parametrize("field, value", [("gates.spearman_min", "-1"), ("gates.spearman_min", "1"),
                                          ("gates.sample_rows", "16384"), ("gates.spearman_pairs", "500000"),
                                          ("fit.seed", "4294967295"), ("fit.sample_size", "2"),
                                          ("store.shard_rows", "1048576"), ("corpus.max_failure_rate", "0")])
def test_values_on_a_bound_are_accepted(field, value):
    section, name = field.split(".")
    got = getattr(getattr(load_settings(overrides=[f"{field}={value}"], environ={}), section), name)
    assert got == float(value) and not math.isnan(got)


# -- dataset and root names --------------------------------------------------------------------
BAD_DATASETS = ["x #y", "../x", "..", ".", "a/b", "/abs", "x y", ".hidden", "-x", "x\ny", "x" * 129, "naïve", "x?y", ""]


@pytest.mark.parametrize("name", BAD_DATASETS, ids=[repr(n)[:20] for n in BAD_DATASETS])
def test_unsafe_dataset_name_is_refused_by_the_cli_before_any_directory(published, name):
    error, _ = _refused(published, ["produce", "--text", str(published / "text.npy"), "--image",
                                    str(published / "image.npy"), "--out", "ROOT", "--dataset", name])
    assert "storage.dataset" in error
    if name:
        assert repr(name) in error  # named as given, never truncated at ' #'


@pytest.mark.parametrize("name", ["x #y", "../x"])
def test_unsafe_dataset_name_given_by_set_is_refused_by_the_cli(published, name):
    error, _ = _refused(published, ["produce", "--text", str(published / "text.npy"), "--image",
                                    str(published / "image.npy"), "--out", "ROOT", "--set", f"storage.dataset={name}"])
    assert f"storage.dataset: {name!r} is not a dataset name" in error


@pytest.mark.parametrize("source", ["set", "environment", "config"])
def test_dataset_with_a_comment_mark_is_refused_from_every_source(tmp_path, source):
    config = tmp_path / "c.yaml"
    config.write_text("storage:\n  dataset: 'x #y'\n")
    kwargs = {"set": {"overrides": ["storage.dataset=x #y"], "environ": {}},
              "environment": {"environ": {"ANISO_STORAGE__DATASET": "x #y"}},
              "config": {"config_file": config, "environ": {}}}[source]
    with pytest.raises(ConfigError, match=r"storage\.dataset: 'x #y' is not a dataset name"):
        load_settings(**kwargs)


@pytest.mark.parametrize("name", ["2024", "no", "true", "null", "1e3", "0x10", "x.y-z_1", "X" * 128])
@pytest.mark.parametrize("how", ["option", "set", "environment"])
def test_dataset_names_yaml_would_read_as_other_types_stay_strings(tmp_path, name, how):
    from aniso.flows.cli import _settings

    if how == "option":
        settings = _settings(None, None, None, **{"storage.dataset": name})
    elif how == "set":
        settings = load_settings(overrides=[f"storage.dataset={name}"], environ={})
    else:
        settings = load_settings(environ={"ANISO_STORAGE__DATASET": name})
    assert settings.storage.dataset == name


@pytest.mark.parametrize("root", ["DIR #1", "out # not a comment", "2024", "no", "s3://bucket/x #y"])
def test_root_is_taken_verbatim(root):
    from aniso.flows.cli import _settings

    assert _settings(None, None, None, **{"storage.root": root}).storage.root == root
    assert load_settings(overrides=[f"storage.root={root}"], environ={}).storage.root == root


@pytest.mark.usefixtures("prefect_harness")
def test_out_with_a_comment_mark_and_a_numeric_dataset_publish_where_named(tmp_path, gap):
    np.save(tmp_path / "text.npy", gap.text[:600])
    np.save(tmp_path / "image.npy", gap.image[:600])
    root = tmp_path / "DIR #1"
    result = CliRunner().invoke(app, ["produce", "--text", str(tmp_path / "text.npy"), "--image", str(tmp_path / "image.npy"),
                                      "--out", str(root), "--dataset", "2024", "--profile", "ci", "--method", "realign"])
    assert result.exit_code == 0, result.output
    assert (root / "2024" / "published" / "LATEST").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR #1", "image.npy", "text.npy"]  # not "DIR"


# -- secrets -----------------------------------------------------------------------------------
SECRET = "PASSWORD-7f3a9c"

#: Every setting that can hold a mapping or a URL (a test below keeps this list complete).
MAPPING_FIELDS = ["storage.storage_options", "method.params", "cluster.cluster_kwargs"]
TEXT_FIELDS = ["storage.root", "corpus.text_field", "corpus.id_field", "corpus.embedding_ids", "embed.model",
               "embed.pretrained", "method.name", "method.model", "gates.suite_file", "cluster.address", "cluster.cluster_class", "cluster.dashboard"]

#: Credentials in a mapping, as they are written in practice.
IN_MAPPINGS = [
    {"s3_additional_kwargs": {"SSECustomerKey": SECRET, "SSECustomerAlgorithm": "AES256"}},
    {"env": {"AWS_SECRET_ACCESS_KEY": SECRET}},
    {"env": {"AWS_SESSION_TOKEN": SECRET}},
    {"client_kwargs": {"headers": {"Authorization": f"Bearer {SECRET}"}}},
    {"password": SECRET},
    {"key": SECRET},
    {"api_key": SECRET},
    {"endpoint_url": f"http://user:{SECRET}@127.0.0.1:9000"},
    {"urls": [f"https://h/x?X-Amz-Signature={SECRET}"]},
]
#: URLs carrying a credential.
IN_URLS = [f"http://user:{SECRET}@host/t.npy", f"s3://AKIA:{SECRET}@bucket/x", f"https://{SECRET}@host/x",
           f"https://host/x.npy?sig={SECRET}", f"https://host/x.npy?X-Amz-Security-Token={SECRET}&a=1"]


def test_the_secret_cases_cover_every_mapping_and_text_setting():
    fields = _leaf_fields()
    mappings = {n for n, a in fields.items() if getattr(a, "__origin__", a) is dict}
    texts = {n for n, a in fields.items() if a in (str, str | None)} - {"storage.dataset"}  # checked as a name
    assert sorted(mappings) == sorted(MAPPING_FIELDS) and sorted(texts) == sorted(TEXT_FIELDS)


@pytest.mark.parametrize("field", MAPPING_FIELDS)
@pytest.mark.parametrize("value", IN_MAPPINGS, ids=lambda v: next(iter(v)))
def test_credential_in_a_mapping_setting_is_refused_without_echo(tmp_path, field, value):
    import yaml

    section, name = field.split(".")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({section: {name: value}}))
    with pytest.raises(ConfigError, match=rf"{field.replace('.', '[.]')}\..*credentials are not accepted") as info:
        load_settings(config_file=config, environ={})
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("url", IN_URLS, ids=["userinfo", "s3-userinfo", "token-user", "sig", "security-token"])
def test_url_with_credentials_in_a_text_setting_is_refused_without_echo(field, url):
    with pytest.raises(ConfigError, match=rf"{field.replace('.', '[.]')}: credentials are not accepted") as info:
        load_settings(overrides=[f"{field}={url}"], environ={})
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("field", MAPPING_FIELDS)
@pytest.mark.parametrize("value", IN_MAPPINGS[:4], ids=lambda v: next(iter(v)))
def test_credential_assigned_to_loaded_settings_is_refused_without_echo(field, value):
    from pydantic import ValidationError

    section, name = field.split(".")
    settings = load_settings(environ={})
    with pytest.raises(ValidationError, match=rf"{field.replace('.', '[.]')}\..*credentials are not accepted") as info:
        setattr(getattr(settings, section), name, value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("field", ["storage.storage_options", "cluster.cluster_kwargs"])
def test_a_secret_given_as_an_environment_reference_is_read_where_it_is_used(monkeypatch, field):
    from aniso.flows._common import make_task_runner

    section, name = field.split(".")
    value = {"s3_additional_kwargs": {"SSECustomerKey": "${ANISO_TEST_SSE_KEY}"}}
    settings = load_settings(values={section: {name: value}}, environ={})
    assert SECRET not in settings.model_dump_json()  # the flow parameter holds the reference only
    monkeypatch.setenv("ANISO_TEST_SSE_KEY", SECRET)
    if section == "storage":
        resolved = settings.storage.fs_options()
    else:
        resolved = make_task_runner(settings.cluster).cluster_kwargs
    assert resolved["s3_additional_kwargs"]["SSECustomerKey"] == SECRET
    monkeypatch.delenv("ANISO_TEST_SSE_KEY")
    with pytest.raises(ConfigError, match=r"\$\{ANISO_TEST_SSE_KEY\}, which is not set"):
        settings.storage.fs_options() if section == "storage" else make_task_runner(settings.cluster)


@pytest.mark.parametrize("url", IN_URLS, ids=["userinfo", "s3-userinfo", "token-user", "sig", "security-token"])
@pytest.mark.parametrize("which", ["text", "image"])
def test_input_url_with_credentials_exits_two_and_writes_nothing(published, url, which):
    inputs = {"text": str(published / "text.npy"), "image": str(published / "image.npy"), which: url}
    error, output = _refused(published, ["produce", "--text", inputs["text"], "--image", inputs["image"], "--out", "ROOT",
                                 "--dataset", "pub"])
    assert f"{which} input" in error and "carries credentials" in error and SECRET not in output


@pytest.mark.parametrize("url", IN_URLS[:2], ids=["userinfo", "s3-userinfo"])
def test_ingest_refuses_an_input_url_with_credentials_before_writing_its_view(tmp_path, url):
    from aniso.io.layout import DatasetLayout
    from aniso.stages.ingest import prepare_input

    with pytest.raises(InputError, match="text input: .* carries credentials") as info:
        prepare_input(url, DatasetLayout(str(tmp_path / "root"), "d"), modality="text", chunk_rows=8, shard_rows=8,
                      storage_options={})
    assert SECRET not in str(info.value) and _tree(tmp_path) == []


# -- diagnose arguments -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnose")
    rng = np.random.default_rng(0)
    for name, shape in {"t": (60, 8), "i": (60, 8), "i4": (60, 4), "one": (1, 8), "eleven": (11, 8)}.items():
        np.save(folder / f"{name}.npy", rng.normal(size=shape).astype(np.float32))
    return folder


DIAGNOSE_CASES = [
    (["--text", "t", "--image", "i4"], "image embeddings (i4.npy) have d=4 but text embeddings"),
    (["--text", "i4", "--image", "t"], "image embeddings (t.npy) have d=8 but text embeddings"),
    (["--text", "t", "--image", "i", "--substitutes", "i4"], "substitutes embeddings (i4.npy) have d=4"),
    (["--text", "t", "--image", "i", "--max-rows", "-5"], "--max-rows must be at least 12"),
    (["--text", "t", "--image", "i", "--max-rows", "0"], "--max-rows must be at least 12"),
    (["--text", "t", "--image", "i", "--max-rows", "11"], "--max-rows must be at least 12"),
    (["--text", "one", "--image", "i"], "text input one.npy has 1 row(s)"),
    (["--text", "t", "--image", "one"], "image input one.npy has 1 row(s)"),
    (["--text", "t", "--image", "i", "--substitutes", "one"], "substitutes input one.npy has 1 row(s)"),
    (["--text", "eleven", "--image", "i"], "text input eleven.npy has 11 row(s)"),
    (["--text", "t", "--image", "missing"], "missing.npy"),
]


@pytest.mark.parametrize("args, message", DIAGNOSE_CASES, ids=[" ".join(a) for a, _ in DIAGNOSE_CASES])
def test_diagnose_bad_arguments_exit_two_with_one_line(small_inputs, monkeypatch, args, message):
    monkeypatch.chdir(small_inputs)
    args = [a + ".npy" if i and args[i - 1] in ("--text", "--image", "--substitutes") else a for i, a in enumerate(args)]
    result = CliRunner().invoke(app, ["diagnose", *args])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("aniso: error:") and message in result.output


# -- storage failures ------------------------------------------------------------------------------
def _private_tmpfs_works(where: Path) -> bool:
    """Whether this machine lets a test mount a small tmpfs in a mount namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    where.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.slow
def test_disk_full_is_one_line_and_exit_one_and_the_rerun_resumes(tmp_path, gap):
    """A real full disk: the storage root is a 96 KiB tmpfs, mounted in a mount namespace of the
    test's own (nothing outside it sees the mount), so the run's first large write fails with
    ENOSPC; the space is then grown and the same command resumes, publishes and verifies."""
    if not _private_tmpfs_works(tmp_path / "probe"):
        pytest.skip("needs `unshare -m` and `mount -t tmpfs` (root with CAP_SYS_ADMIN) for a real full disk")
    np.save(tmp_path / "text.npy", gap.text[:600])
    np.save(tmp_path / "image.npy", gap.image[:600])
    root = tmp_path / "root"
    root.mkdir()
    cli = Path(sys.executable).with_name("aniso")
    produce = (f"{cli} produce --text {tmp_path / 'text.npy'} --image {tmp_path / 'image.npy'} --out {root} "
               "--dataset full --profile ci --method realign")
    out = {name: tmp_path / name for name in ("full.err", "full.rc", "again.err", "again.rc", "verify.rc", "state")}
    script = f"""
mount -t tmpfs -o size=96k tmpfs {root}
{produce} > /dev/null 2> {out['full.err']}; echo $? > {out['full.rc']}
ls -A {root}/full > {out['state']} 2>&1
mount -o remount,size=64m {root}
{produce} > /dev/null 2> {out['again.err']}; echo $? > {out['again.rc']}
{cli} verify {root} --dataset full > /dev/null 2>&1; echo $? > {out['verify.rc']}
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # the CLI's own local server, outside the tmpfs
    subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=env, timeout=900, check=True)
    failed = out["full.err"].read_text()
    assert out["full.rc"].read_text().strip() == "1", failed[-3000:]
    errors = [line for line in failed.splitlines() if line.startswith("aniso: error:")]
    assert len(errors) == 1 and "No space left on device (errno 28)" in errors[0], failed[-3000:]
    assert "Traceback" not in failed and "published" not in out["state"].read_text().split()
    assert out["again.rc"].read_text().strip() == "0", out["again.err"].read_text()[-3000:]
    assert out["verify.rc"].read_text().strip() == "0"
