"""Shared fixtures, by section.

1. Environment: offline, quiet, hermetic (set before anything imports Prefect).
2. Data: the real paired sets in ``../shared/data`` (skipped when absent), synthetic corpora
   with a planted gap (:mod:`aniso.testing.synthetic`) and caption tars with repeated keys.
3. Storage: a real S3-protocol server on loopback (moto ``ThreadedMotoServer``, port 0) and the
   ``root`` fixture parametrised over a local directory and an S3 bucket.
4. Execution: a Dask ``LocalCluster`` and the Prefect test harness (session scoped).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

# --- 1. environment ------------------------------------------------------------------------
_TMP_HOME = tempfile.mkdtemp(prefix="aniso-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_HOME"] = os.path.join(_TMP_HOME, "prefect")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", "120")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "ANISO_PROFILE"):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aniso.testing.synthetic import PlantedGap, planted_gap  # noqa: E402

# --- 2. data -------------------------------------------------------------------------------
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(rel: str) -> Path:
    path = SHARED_DATA / rel
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (../shared/data is not checked out)")
    return path


@pytest.fixture(scope="session")
def coco500() -> tuple[np.ndarray, np.ndarray]:
    """(text, image) of COCO-500, CLIP ViT-B/16, paired row by row."""
    arr = np.load(_shared("mind-the-gap-coco500/features_clip.npy"))
    return arr[1], arr[0]


@pytest.fixture(scope="session")
def convirt500() -> tuple[np.ndarray, np.ndarray]:
    """(text, image) of ConVIRT-500 (chest X-ray reports / images), paired row by row."""
    arr = np.load(_shared("mind-the-gap-coco500/features_convirt.npy"))
    return arr[1], arr[0]


@pytest.fixture(scope="session")
def flickr8k() -> tuple[np.ndarray, np.ndarray]:
    """(text, image) of Flickr8k-500, CLIP ViT-B/32; image rows repeat every 5 captions."""
    base = _shared("flickr8k-clip-vitb32")
    return np.load(base / "text_embeddings.npy"), np.load(base / "image_embeddings.npy")


@pytest.fixture(scope="session")
def gap() -> PlantedGap:
    """Synthetic paired data (n=2000, d=64) with a planted centroid gap and rank-3 residual."""
    return planted_gap()


@pytest.fixture
def numbered_tars():
    """``write(folder, tars, samples)``: caption tars ``00000.tar``, ... in ``folder`` whose keys start
    again at ``000000`` in each file, as many webdataset writers make them; returns ``folder``."""
    import io
    import tarfile

    def write(folder: Path, tars: int, samples: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(tars):
            with tarfile.open(folder / f"{t:05d}.tar", mode="w") as tar:
                for k in range(samples):
                    data = f"caption {t} {k}".encode()
                    info = tarfile.TarInfo(f"{k:06d}.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return folder

    return write


# --- 3. storage ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server():
    """A real S3-protocol server on 127.0.0.1 (random port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_root(moto_server):
    """A fresh bucket on the loopback server: ``(url, storage_options)``.

    Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (set above), as in
    production: settings refuse credential keys in ``storage_options``.
    """
    import s3fs

    options = {"endpoint_url": moto_server}
    bucket = f"aniso-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{bucket}/data", options


@pytest.fixture(params=["local", "s3"], ids=["local", "s3"])
def root(request, tmp_path):
    """A storage root on each backend: ``(url, storage_options)``."""
    if request.param == "local":
        return str(tmp_path / "root"), {}
    request.applymarker(pytest.mark.s3)
    return request.getfixturevalue("s3_root")


# --- 4. packaging --------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".cache",
               ".aniso-demo")


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory) -> tuple[Path, str]:
    """The project's wheel, and everything its build printed (``pip wheel -v``).

    Built from a copy of the source, never in the checkout: an in-tree build writes ``build/``
    and ``*.egg-info`` there, which two test processes building at once would share.
    """
    import shutil
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("wheel")
    source, out = base / "source", base / "dist"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE), symlinks=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v",
         "-w", str(out), str(source)],
        check=True, cwd=base, timeout=600, capture_output=True, text=True,
    )
    [path] = out.glob("aniso-*.whl")
    return path, done.stdout + done.stderr


# --- 5. execution --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dask_cluster():
    """A real in-process Dask ``LocalCluster`` (2 workers × 1 thread)."""
    import dask
    from distributed import LocalCluster

    # no worker profiler, as aniso's own local clusters (flows/_common.py says why)
    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dask_client(dask_cluster):
    from distributed import Client

    with Client(dask_cluster) as client:
        yield client


@pytest.fixture
def prefect_server(tmp_path):
    """A real ``prefect server start`` on a free loopback port: ``(api_url, env, procs)``
    (:func:`aniso.testing.processes.prefect_server`)."""
    from aniso.testing.processes import prefect_server as server

    with server(tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect against a temporary SQLite backend (started once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def pytest_collection_modifyitems(config, items):
    """Tests that run a Prefect flow end to end are marked ``flow`` (``make check`` leaves them out)."""
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flow)
