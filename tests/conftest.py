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


# The slowest work units, first (see pytest_collection_modifyitems): in the order that keeps
# both test workers busy to the end (from --durations on 2 workers).
SLOWEST_FIRST = [
    "smoke_run", "test_e2e_eval",
    "test_ctrl_c_during_the_post_search_scoring_stops_it_and_resume_finishes", "test_e2e_s3",
    "test_an_interrupted_search_resumes_without_losing_or_redoing_work",
    "test_a_full_disk_stops_the_search_in_one_line_and_resume_finishes",
    "test_a_failing_trial_is_retried_and_one_that_keeps_failing_is_failed", "test_e2e_study",
    "test_slurm_symmetric_run_script_under_a_faked_slurm",
    "test_trunk_siblings_and_averages_fork_and_soup_as_recorded",
    "test_a_local_run_starts_its_own_ray_on_loopback_and_sigterm_stops_it_leaving_nothing",
    "test_search_on_a_two_process_ray_cluster",
]


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the groups
def pytest_collection_modifyitems(config, items):
    """With `--dist loadgroup` (pyproject.toml), each xdist_group runs on one test worker, and
    the groups are handed out in collection order (`--no-loadscope-reorder`). The groups:
    every test of a finished smoke search (`smoke_run`, made once per worker) in one, so that
    it is made once; an end-to-end test that shares no module fixture on its own, so that the
    slow ones of one file run on both workers; every other file as a whole (`--dist
    loadfile`). The slowest groups go first: one handed out last would keep a worker busy
    while the other idles; the unit tests, many and short, fill in at the end."""
    if not getattr(config.option, "loadgroup", False):
        return
    order: dict[str, int] = {}
    for item in items:
        group = _group(item)
        item.add_marker(pytest.mark.xdist_group(group))
        order.setdefault(group, len(order))

    def rank(item) -> tuple[int, int]:
        group = _group(item)
        slow = SLOWEST_FIRST.index(group) if group in SLOWEST_FIRST else None
        e2e = "/e2e/" in f"/{item.nodeid}"
        return (0 if slow is not None else 1 if e2e else 2,
                slow if slow is not None else order[group])

    items.sort(key=rank)


def _group(item) -> str:
    """The xdist_group of a test: `smoke_run`, its own name, or its file's (see above)."""
    if "smoke_run" in item.fixturenames:
        return "smoke_run"
    shared = [d for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs
              if d.scope in ("module", "class", "package")]
    if "/e2e/" in f"/{item.nodeid}" and not shared:
        return item.name
    return Path(item.nodeid.split("::")[0]).stem


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
