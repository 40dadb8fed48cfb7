"""infra/: the deployment file validates with Prefect's own loader; cluster specs parse, are valid
settings overlays and name real cluster classes; the serve deployment carries no credentials."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from aniso.config import CONF_DIR, ClusterSettings, load_settings

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"

#: The cluster classes the specs name, with keyword arguments they accept (from each package's
#: public signature: dask-cuda LocalCUDACluster, dask-kubernetes operator KubeCluster,
#: dask-jobqueue 0.9 SLURMCluster/SLURMJob). Checked against the real signature when installed.
CLUSTER_CLASSES = {
    "local-gpu.yaml": ("dask_cuda.LocalCUDACluster", {
        "CUDA_VISIBLE_DEVICES", "n_workers", "threads_per_worker", "device_memory_limit", "protocol",
        "dashboard_address", "pre_import", "rmm_pool_size", "memory_limit"}),
    "kubernetes.yaml": ("dask_kubernetes.operator.KubeCluster", {
        "name", "namespace", "image", "n_workers", "resources", "env", "worker_command", "idle_timeout",
        "shutdown_on_close", "custom_cluster_spec", "port_forward_cluster_ip", "scheduler_service_type"}),
    "slurm.yaml": ("dask_jobqueue.SLURMCluster", {
        "n_workers", "queue", "account", "cores", "processes", "memory", "walltime", "job_extra_directives",
        "job_script_prologue", "local_directory", "log_directory", "worker_extra_args", "job_cpu", "job_mem"}),
}


# -- prefect.yaml ---------------------------------------------------------------------------
def _load_with_prefect():
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions

    console = Console(record=True, width=200)
    configs, actions = _load_deploy_configs_and_actions(INFRA / "prefect.yaml", console=console)
    return configs, actions, console.export_text()


def test_prefect_yaml_validates_with_prefects_loader():
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    PrefectYamlModel.model_validate(raw)  # strict: raises on a schema error
    configs, actions, printed = _load_with_prefect()
    # the CLI loader swallows validation errors into a warning and an empty list: neither happened
    assert "validation" not in printed.lower() and "unable" not in printed.lower(), printed
    assert {c["name"] for c in configs} >= {"produce-nightly", "produce-weekly-refit", "retention"}
    # module entrypoints: the installed package, nothing to pull; an explicit [] because `pull: null`
    # makes `prefect deploy` add a set_working_directory step naming the deployer's directory
    assert actions.get("pull") == []
    pulls = {c["name"]: c.get("pull") for c in configs}
    assert pulls["produce-local"] == [{"aniso.flows.steps.worker_directory": {}}]
    assert all(steps is None for name, steps in pulls.items() if name != "produce-local"), pulls


def test_worker_directory_step_moves_the_flow_run_to_the_workers_directory(tmp_path, monkeypatch):
    from prefect.utilities.importtools import import_object

    from aniso.errors import ConfigError

    step = import_object("aniso.flows.steps.worker_directory")  # as Prefect's run_step finds it

    worker_dir, run_dir = tmp_path / "worker", tmp_path / "run"
    worker_dir.mkdir(), run_dir.mkdir()
    monkeypatch.chdir(run_dir)  # where a process worker starts a flow run: a temporary directory
    monkeypatch.setenv("PWD", str(worker_dir))
    out = step()
    assert out == {"directory": str(worker_dir)} and Path.cwd() == worker_dir
    monkeypatch.setenv("PWD", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="gone is not a directory"):
        step()
    monkeypatch.delenv("PWD")
    with pytest.raises(ConfigError, match="has no PWD"):
        step()


def test_deployments_schedule_produce_with_valid_parameters():
    from prefect.cli.deploy._schedules import \
        _schedule_config_to_deployment_schedule
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    configs, _, _ = _load_with_prefect()
    for config in configs:
        # module paths: they work from an installed package
        assert config["entrypoint"] in ("aniso.flows.produce:produce", "aniso.flows.retention:retention")
        flow = load_flow_from_entrypoint(config["entrypoint"])
        assert flow.name == config["entrypoint"].rsplit(":", 1)[-1]
        assert set(config["parameters"]) == set(inspect.signature(flow.fn).parameters)
        schedules = [_schedule_config_to_deployment_schedule(s) for s in config["schedules"]]
        assert schedules and all(isinstance(s["schedule"], CronSchedule) for s in schedules)
        # the settings parameter is a valid settings tree (what the flow validates at run time)
        settings = load_settings(environ={}).model_validate(config["parameters"]["settings"])
        assert settings.storage.root.startswith("s3://" if "gpu" in config["tags"] else "./")
        assert "storage_options" not in config["parameters"]["settings"]["storage"]  # creds from env
        assert config["work_pool"]["name"]


def test_serve_deployment_uses_cron_and_drops_credentials():
    from prefect.client.schemas.schedules import CronSchedule

    from aniso.flows.deployments import build_deployment

    settings = load_settings(environ={}, overrides=["storage.storage_options.endpoint_url=http://127.0.0.1:9"])
    deployment = build_deployment("text.npy", "image.npy", settings, cron="30 2 * * *")
    assert deployment.entrypoint == "aniso.flows.produce.produce"  # a module path: works installed
    [schedule] = deployment.schedules
    assert isinstance(schedule.schedule, CronSchedule) and schedule.schedule.cron == "30 2 * * *"
    assert deployment.parameters["settings"]["storage"]["storage_options"] == {"endpoint_url": "http://127.0.0.1:9"}
    assert deployment.parameters["settings"]["storage"]["dataset"] == settings.storage.dataset


# -- cluster specs --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLUSTER_CLASSES))
def test_cluster_specs_are_settings_overlays_naming_real_classes(name):
    path = INFRA / "cluster" / name
    data = yaml.safe_load(path.read_text())
    cluster = ClusterSettings.model_validate(data["cluster"])
    dotted, accepted = CLUSTER_CLASSES[name]
    assert cluster.cluster_class == dotted
    assert set(cluster.cluster_kwargs) <= accepted, set(cluster.cluster_kwargs) - accepted
    settings = load_settings(config_file=path, environ={})
    assert settings.cluster.cluster_class == dotted


def test_kubernetes_spec_limits_gpus():
    data = yaml.safe_load((INFRA / "cluster" / "kubernetes.yaml").read_text())
    assert data["cluster"]["cluster_kwargs"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    resource = yaml.safe_load((INFRA / "cluster" / "kubernetes-daskcluster.yaml").read_text())
    assert resource["apiVersion"] == "kubernetes.dask.org/v1" and resource["kind"] == "DaskCluster"
    [worker] = resource["spec"]["worker"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    # credentials only by reference to a Kubernetes secret
    assert all("valueFrom" in e for e in worker["env"] if e["name"].startswith("AWS_"))


def test_slurm_spec_requests_a_gpu_per_job():
    data = yaml.safe_load((INFRA / "cluster" / "slurm.yaml").read_text())
    assert "--gres=gpu:1" in data["cluster"]["cluster_kwargs"]["job_extra_directives"]


@pytest.mark.parametrize("name", sorted(CLUSTER_CLASSES))
def test_cluster_class_signature_when_installed(name):
    dotted, _ = CLUSTER_CLASSES[name]
    module, cls_name = dotted.rsplit(".", 1)
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module.split('.')[0]} is not installed here (an optional, per-site dependency)")
    cls = getattr(importlib.import_module(module), cls_name)
    data = yaml.safe_load((INFRA / "cluster" / name).read_text())
    params = set(inspect.signature(cls).parameters)
    if dotted == "dask_jobqueue.SLURMCluster":
        params |= set(inspect.signature(importlib.import_module("dask_jobqueue.slurm").SLURMJob).parameters)
        params |= set(inspect.signature(importlib.import_module("dask_jobqueue.core").Job).parameters)
    assert set(data["cluster"]["cluster_kwargs"]) <= params


# -- config examples and the container recipe -----------------------------------------------
def test_s3_and_ci_profiles_load_without_credentials():
    s3 = load_settings("s3", environ={})
    # no endpoint either: AWS_ENDPOINT_URL decides (the README's S3 recipe)
    assert s3.storage.root.startswith("s3://") and "endpoint_url" not in s3.storage.storage_options
    text = (CONF_DIR / "s3.yaml").read_text()
    for key in ("key:", "secret:", "aws_secret_access_key:", "token:"):
        assert f"\n    {key}" not in text and f"\n  {key}" not in text
    ci = load_settings("ci", environ={})
    assert ci.store.shard_rows <= 4096


def test_dockerfile_installs_pinned_project():
    text = (INFRA / "Dockerfile").read_text()
    assert "pyproject.toml" in text and "pip install --no-deps ." in text
    assert "AWS_SECRET_ACCESS_KEY=" not in text and "ENV AWS_" not in text
    # a recursive chown in a layer of its own would store the multi-GB venv a second time
    assert not re.search(r"^RUN[^\n]*chown -R", text, re.M)
    import tomllib

    assert "-c constraints.txt" in text  # what the image installs is exactly pinned
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _constraints()
    for dep in project["dependencies"] + project["optional-dependencies"]["pipeline"] + project["optional-dependencies"]["embed"]:
        assert _name(dep) in pins, f"{dep} has no exact pin in constraints.txt"


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(name)] = version
    return pins


def test_dependencies_have_lower_bounds_and_extras_split_library_pipeline_embed():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(d) for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert all(">=" in d and "==" not in d for d in project["dependencies"])
    assert all(">=" in d for e in ("pipeline", "embed", "test") for d in extras[e])
    # the library needs no orchestrator and no image encoder; the extras carry them
    assert not core & {"prefect", "prefect-dask", "distributed", "great-expectations", "typer"}
    assert {"prefect", "prefect-dask", "distributed", "great-expectations"} <= {_name(d) for d in extras["pipeline"]}
    assert {"open-clip-torch", "torchvision", "pillow"} <= {_name(d) for d in extras["embed"]}
    # every pin satisfies its lower bound
    from packaging.requirements import Requirement

    pins = _constraints()
    for dep in project["dependencies"] + [d for e in ("pipeline", "embed", "test") for d in extras[e]]:
        req = Requirement(dep)
        assert req.specifier.contains(pins[_name(req.name)], prereleases=True), (dep, pins[_name(req.name)])
    assert "constraints.txt" in (REPO / "Makefile").read_text()


def test_the_schedule_refits_weekly_applies_the_model_nightly_and_runs_retention():
    """One dataset: the weekly refit and the nightly frozen-model run publish into it with the
    documented default method, and retention keeps it."""
    configs = {c["name"]: c for c in _load_with_prefect()[0]}
    nightly, weekly, retention = (configs[n]["parameters"]["settings"] for n in
                                  ("produce-nightly", "produce-weekly-refit", "retention"))
    default = load_settings(environ={}).method.name
    assert nightly["method"] == {"name": default, "model": "latest"} and weekly["method"] == {"name": default}
    assert nightly["storage"] == weekly["storage"] == retention["storage"]
    assert configs["retention"]["parameters"]["min_age_hours"] >= 24
    assert all(s["active"] for n in ("produce-nightly", "produce-weekly-refit", "retention")
               for s in configs[n]["schedules"])


def _final_workdir_contents() -> tuple[str, list[str]]:
    """The image's last WORKDIR and what COPY left in it (``rm -rf`` in RUN lines honoured),
    read from the Dockerfile: paths relative to that directory."""
    import posixpath
    import shlex

    workdir, placed = "/", []
    for line in (INFRA / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "WORKDIR":
            workdir = posixpath.join(workdir, words[1])
        elif words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            *sources, dest = words[1:]
            dest = posixpath.normpath(posixpath.join(workdir, dest))
            for src in sources:
                placed.append(posixpath.join(dest, posixpath.basename(src.rstrip("/"))) if dest.endswith("/") or
                              len(sources) > 1 or dest == workdir else dest)
        elif words[0] == "RUN" and "rm" in words:
            tokens = shlex.split(line[3:].replace("&&", ";").replace(";", " ; "))
            for k, token in enumerate(tokens):
                if token == "rm":
                    for target in tokens[k + 1:]:
                        if target == ";":
                            break
                        if not target.startswith("-"):
                            gone = posixpath.join(workdir, target)
                            placed = [p for p in placed if p != gone and not p.startswith(gone + "/")]
    inside = [posixpath.relpath(p, workdir) for p in placed if p.startswith(workdir.rstrip("/") + "/")]
    return workdir, inside


@pytest.mark.slow
def test_image_layout_loads_the_flow_from_its_working_directory(tmp_path, project_wheel):
    """The container's file layout without a Docker daemon: the wheel installed (extracted), the
    working directory holding what the Dockerfile leaves there; `python -m aniso.flows.cli` and
    Prefect's load_flow_from_entrypoint work from it (a source aniso/ folder there shadowed the
    installed package: No module named 'aniso.flows')."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    import zipfile

    workdir, inside = _final_workdir_contents()
    assert "aniso" not in {p.split("/")[0] for p in inside}, (workdir, inside)
    site = tmp_path / "site"
    with zipfile.ZipFile(project_wheel[0]) as z:
        z.extractall(site)
    here = tmp_path / "workdir"
    here.mkdir()
    for rel in inside:  # what the image's working directory holds
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, here / rel)
        elif src.exists():
            (here / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, here / rel)
    purelib = Path(sysconfig.get_paths()["purelib"])
    deps = [str(purelib)] + [line for pth in purelib.glob("*.pth") for line in pth.read_text().splitlines()
                             if line and not line.startswith(("import", "#")) and Path(line).is_dir()]
    # no site processing: the checkout's editable install must not be what is imported
    probe = ("import sys, runpy; sys.path[1:1] = sys.argv[1:]; import aniso; assert aniso.__file__.startswith(sys.argv[1]), aniso.__file__; "
             "from prefect.flows import load_flow_from_entrypoint as load; print(load('aniso.flows.produce:produce').name); "
             "sys.argv = ['aniso', '--version']; runpy.run_module('aniso.flows.cli', run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    result = subprocess.run([sys.executable, "-S", "-c", probe, str(site), *deps], cwd=here, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "produce" in result.stdout and "aniso 0." in result.stdout, \
        result.stdout[-2000:] + result.stderr[-3000:]


def test_image_base_ships_one_cuda_runtime():
    """No CUDA base image beside torch's own CUDA wheels, or one of the same CUDA version."""
    import re

    base = next(line.split()[1] for line in (INFRA / "Dockerfile").read_text().splitlines() if line.startswith("FROM"))
    torch_pin = _constraints()["torch"]
    if base.startswith("nvidia/cuda:"):
        cuda = re.match(r"nvidia/cuda:(\d+\.\d+)", base).group(1)
        local = re.search(r"\+cu(\d+)", torch_pin)
        assert local and cuda.replace(".", "") == local.group(1)[:len(cuda.replace(".", ""))], (base, torch_pin)
    else:
        assert "cuda" not in base.lower(), base
