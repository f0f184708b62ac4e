"""The suite's fixtures and pytest hooks; the functions tests share are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SHARED_RAY_ENV, cli, stop_shared_ray


def pytest_configure(config):
    # The tests send SIGINT to the CLIs they start, as a terminal's Ctrl-C does. A suite
    # started in the background (`cmd &` in a script, nohup) has SIGINT ignored, and so would
    # its CLIs (an ignored signal stays ignored across exec; Python and segtune then keep it
    # so): Ctrl-C during the post-search scoring was ignored and that test failed. Handled
    # here, the CLIs start with SIGINT at its default.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The suite runs several torch processes at once on few cores (test workers, drivers,
    # trials). GNU OpenMP's threads spin while they wait for work, and a spinning thread holds
    # a core another process needs: two 2-thread processes on 2 cores took 2.3x as long, and
    # 2.3x the CPU, as with PASSIVE (bench/omp_wait.py). Set before torch loads; children
    # inherit it. With it, the suite on two test workers used 730 CPU-s instead of 940.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Generated phantoms go to a cache of the test run, never to the user's ~/.cache.
    cache = Path(config.rootpath) / ".pytest_cache" / "segtune-data"
    os.environ.setdefault("SEGTUNE_CACHE", str(cache))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray reads its loopback switch once, at import: this process's drivers (in-process
    # searches on the session's Ray, unit tests' local Rays) use loopback, as a local run does,
    # while the CLIs the tests start inherit no such setting.
    if "ray" not in sys.modules and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ:
        os.environ.update(SHARED_RAY_ENV)
        import ray  # noqa: F401

        del os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]


# The slowest test files first (see pytest_collection_modifyitems), from --durations on 2
# workers; the other end-to-end files follow, then the unit tests.
SLOWEST_FIRST = ["test_e2e_resume", "test_e2e_mistakes", "test_e2e_eval", "test_e2e",
                 "test_stopping_scoring", "test_stopping", "test_e2e_s3", "test_e2e_study",
                 "test_cluster", "test_e2e_soups", "test_browser", "test_e2e_predict"]


def pytest_collection_modifyitems(config, items):
    """The slowest files first. The test workers take whole files (`--dist loadfile`) in
    collection order (`--no-loadscope-reorder`, pyproject.toml): xdist's default order, most
    tests first, handed the slowest end-to-end files (few tests each) out last, one worker
    busy with them while the other idled; the unit tests, many and short, fill in at the end.
    (`--dist loadgroup` cannot group across files here: pytest 9.2 ignores the node ids that
    pytest-xdist 3.8 rewrites for it.)"""

    def rank(item) -> tuple[int, int]:
        stem = Path(item.nodeid.split("::")[0]).stem
        if stem in SLOWEST_FIRST:
            return (0, SLOWEST_FIRST.index(stem))
        return (1 if "/e2e/" in f"/{item.nodeid}" else 2, 0)

    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture
def write_spec(tmp_path):
    """Write a YAML spec from an indented string; returns its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


def pytest_unconfigure(config):
    stop_shared_ray()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A finished search of spaces/smoke.yaml (trials, soups, MLflow), made once for every
    end-to-end test that only reads a finished run or adds to it: (storage, run folder, the
    run's process)."""
    storage = tmp_path_factory.mktemp("runs")
    proc = cli("run", "spaces/smoke.yaml", "--storage", str(storage))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage, storage / "smoke", proc


@pytest.fixture(scope="session")
def phantom_root():
    from train_fn.phantom import write_phantom_dataset

    return write_phantom_dataset(Path(os.environ["SEGTUNE_CACHE"]) / "unit-n6", 6, seed=0)


@pytest.fixture(scope="session")
def blank_store(tmp_path_factory):
    """An empty MLflow sqlite store, made once: MLflow's schema migrations take seconds per
    store."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(blank_store, tmp_path):
    """A test's own empty MLflow store (a copy of `blank_store`): its tracking URI."""
    shutil.copy(blank_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def s3_env():
    """An in-process S3 server (moto) on a free loopback port; the environment variables that
    point pyarrow, boto3 and Ray's workers at it (no real credentials needed)."""
    import socket

    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    server.stop()


@pytest.fixture
def bucket(s3_env, monkeypatch):
    """A fresh, empty bucket on the test S3 server, with its environment set; its name."""
    import uuid

    boto3 = pytest.importorskip("boto3")
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    name = f"segtune-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def no_ray_left_behind():
    """A test that started Ray in this process (in-process `main([...])` calls, Ray's
    auto-start on a first task) shuts it down: the next test's `ray.init` starts afresh
    instead of failing as a second init."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
