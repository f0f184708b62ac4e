from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAULT_HOOK = ROOT / "tests" / "fault_hook"


def fault_env(setting: str) -> dict[str, str]:
    """Environment for a CLI subprocess whose trials fail as SEGTUNE_FAULT says (see
    tests/fault_hook/sitecustomize.py: injected from outside, segtune reads none of it)."""
    path = os.pathsep.join(p for p in (str(FAULT_HOOK), os.environ.get("PYTHONPATH")) if p)
    return {"SEGTUNE_FAULT": setting, "PYTHONPATH": path}


def pytest_configure(config):
    # Generated phantoms go to a cache of the test run, never to the user's ~/.cache.
    cache = Path(config.rootpath) / ".pytest_cache" / "segtune-data"
    os.environ.setdefault("SEGTUNE_CACHE", str(cache))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def write_spec(tmp_path):
    """Write a YAML spec from an indented string; returns its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


def cli(*args, cwd=None):
    """`python -m search ARGS` as a user runs it, in a subprocess."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


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
