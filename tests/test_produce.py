"""The ``produce`` flow end to end under Prefect's test harness on a real Dask LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

from aniso._fs import join_url, open_url
from aniso.config import load_settings
from aniso.errors import GateFailed, InputError
from aniso.flows._common import make_task_runner
from aniso.flows.produce import produce
from aniso.io.layout import DatasetLayout
from aniso.methods import Aligner
from aniso.published.dataset import open_published, read_latest
from aniso.stages import apply as apply_stage

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _settings(url, options, **overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    settings = load_settings(profile="ci", overrides=[f"storage.root={url}", "storage.dataset=t", *sets], environ={})
    settings.storage.storage_options = options
    return settings


def _inputs(url, options, gap, *, text=None, image=None):
    paths = {}
    for name, array in (("text", gap.text if text is None else text), ("image", gap.image if image is None else image)):
        paths[name] = join_url(url, "in", f"{name}.npy")
        with open_url(paths[name], "wb", options) as f:
            np.save(f, array)
    return paths


def run(settings, paths):
    flow = produce.with_options(task_runner=make_task_runner(settings.cluster))
    return flow(text=paths["text"], image=paths["image"], settings=settings)


def test_produce_publishes_substitutes(root, gap):
    url, options = root
    settings = _settings(url, options, **{"method.name": "realign"})
    paths = _inputs(url, options, gap)
    result = run(settings, paths)
    assert result["gates"]["passed"]
    published = open_published(url, "t", storage_options=options)
    assert published.manifest["n_rows"] == gap.text.shape[0]
    assert len(published.manifest["shards"]) == -(-gap.text.shape[0] // 1024)
    published.verify()
    subs = published.embedding[:]
    expected = Aligner.load(result["model"], options).transform(gap.text)
    np.testing.assert_array_equal(subs, expected)  # sharded Dask apply == in-memory transform
    assert list(published.ids[:3]) == ["0", "1", "2"]
    # centroid gap closed, as the gate says
    assert np.linalg.norm(subs.astype(np.float64).mean(0) - gap.image.astype(np.float64).mean(0)) < 1e-3
    # the run report sits beside the manifest (on S3 when the root is), naming this version
    from aniso._fs import open_url

    report = result["published"]["report"]
    manifest_dir = f"{url.rstrip('/')}/t/{result['published']['manifest'].rsplit('/', 1)[0]}"
    assert report == f"{manifest_dir}/report.html"
    # written before the manifest, which names it: the version never changes once published
    assert published.manifest["report"] == "report.html"
    with open_url(report, "r", options) as f:
        page = f.read()
    assert published.manifest["version"] in page and "realign" in page and page.count("<svg") == 4


def test_rerun_is_resumed_and_identical(tmp_path, gap, monkeypatch):
    clean = _settings(str(tmp_path / "clean"), {})
    run(clean, _inputs(str(tmp_path / "clean"), {}, gap))
    reference = open_published(str(tmp_path / "clean"), "t")

    url = str(tmp_path / "crashy")
    settings = _settings(url, {})
    paths = _inputs(url, {}, gap)
    real_apply = apply_stage.apply_shard

    def crash_on_shard_1(model_url, text_store_url, subs_url, shard, storage_options):
        if shard == 1:
            raise RuntimeError("injected crash in shard 1")
        return real_apply(model_url, text_store_url, subs_url, shard, storage_options)

    monkeypatch.setattr(apply_stage, "apply_shard", crash_on_shard_1)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(settings, paths)
    assert read_latest(DatasetLayout(url, "t")) is None  # nothing published
    monkeypatch.setattr(apply_stage, "apply_shard", real_apply)

    result = run(settings, paths)
    resumed = open_published(url, "t")
    assert resumed.manifest["run_key"] == reference.manifest["run_key"] == result["run_key"]
    assert resumed.manifest["shards"] == reference.manifest["shards"]  # same checksums
    np.testing.assert_array_equal(resumed.embedding[:], reference.embedding[:])


def test_execution_settings_do_not_change_the_run(tmp_path, gap):
    url = str(tmp_path / "r")
    paths = _inputs(url, {}, gap)
    first = run(_settings(url, {}), paths)
    second = run(_settings(url, {}, **{"cluster.n_workers": 1, "embed.batch_size": 7}), paths)
    assert first["run_key"] == second["run_key"]
    assert first["published"]["version"] == second["published"]["version"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("dimension", "d=64 but image embeddings"),
        ("nan", r"text\.npy: row 5 contains NaN"),
        ("empty", "no rows"),
    ],
)
def test_bad_input_is_rejected_and_nothing_is_published(tmp_path, gap, case, message):
    url = str(tmp_path / case)
    text, image = gap.text.copy(), gap.image
    if case == "dimension":
        image = image[:, :32]
    elif case == "nan":
        text[5, 3] = np.nan
    elif case == "empty":
        text = text[:0]
    paths = _inputs(url, {}, gap, text=text, image=image)
    with pytest.raises(InputError, match=message):
        run(_settings(url, {}), paths)
    assert read_latest(DatasetLayout(url, "t")) is None


def test_mismatched_ids_are_rejected(tmp_path, gap):
    import pandas as pd

    folder = tmp_path / "cr"
    (folder / "text_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "text_emb" / "text_emb_0.npy", gap.text)
    pd.DataFrame({"key": [f"k{i}" for i in range(len(gap.text) - 1)]}).to_parquet(folder / "metadata" / "metadata_0.parquet")
    np.save(tmp_path / "image.npy", gap.image)
    with pytest.raises(InputError, match="ids do not match embeddings"):
        run(_settings(str(tmp_path / "out"), {}), {"text": str(folder / "text_emb"), "image": str(tmp_path / "image.npy")})
    assert read_latest(DatasetLayout(str(tmp_path / "out"), "t")) is None


def test_duplicate_ids_are_rejected(tmp_path, gap):
    import pandas as pd

    folder = tmp_path / "dup"
    (folder / "text_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "text_emb" / "text_emb_0.npy", gap.text)
    keys = [f"k{i}" for i in range(len(gap.text))]
    keys[1500] = "k7"
    pd.DataFrame({"key": keys}).to_parquet(folder / "metadata" / "metadata_0.parquet")
    np.save(tmp_path / "image.npy", gap.image)
    with pytest.raises(InputError, match="id 'k7' appears at rows 7 and 1500"):
        run(_settings(str(tmp_path / "out"), {}), {"text": str(folder / "text_emb"), "image": str(tmp_path / "image.npy")})


def test_failed_gate_keeps_the_previous_publication(tmp_path, gap):
    url = str(tmp_path / "g")
    paths = _inputs(url, {}, gap)
    run(_settings(url, {}), paths)
    before = read_latest(DatasetLayout(url, "t"))
    # identity leaves the whole modality gap: the centroid gate must fail
    with pytest.raises(GateFailed, match="centroid_residual observed") as info:
        run(_settings(url, {}, **{"method.name": "identity"}), paths)
    assert info.value.failures and info.value.failures[0]["name"] == "centroid_residual"
    assert read_latest(DatasetLayout(url, "t")) == before
    open_published(url, "t").verify()  # the previous version is intact


def test_local_cluster_workers_run_without_the_statistical_profiler():
    """The workers share the flow's process (``processes: false``): their 10 ms profiler
    (sys._current_frames) can deadlock Python 3.11 against an exiting thread, so it is off."""
    from distributed import get_worker
    from prefect import flow, task

    @task
    def profiling() -> bool:
        return "profile" in get_worker().periodic_callbacks

    import dask

    settings = load_settings(profile="ci", environ={})
    assert settings.cluster.processes is False
    with dask.config.set({"distributed.worker.profile.enabled": True}):  # dask's default, whatever ran before

        @flow(task_runner=make_task_runner(settings.cluster))
        def probe() -> bool:
            return profiling.submit().result()

        assert probe() is False
