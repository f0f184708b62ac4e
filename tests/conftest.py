from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAULT_HOOK = ROOT / "tests" / "fault_hook"
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Ray this Python runs


def fault_env(setting: str) -> dict[str, str]:
    """Environment for trials that fail as SEGTUNE_FAULT says (`cli_for_trials`; see
    tests/fault_hook/sitecustomize.py: injected from outside, segtune reads none of it)."""
    path = os.pathsep.join(p for p in (str(FAULT_HOOK), os.environ.get("PYTHONPATH")) if p)
    return {"SEGTUNE_FAULT": setting, "PYTHONPATH": path}


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


@pytest.fixture
def write_spec(tmp_path):
    """Write a YAML spec from an indented string; returns its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


# Commands that start no Ray and no process of their own: `cli` runs them in this process.
IN_PROCESS = ("soup", "evaluate", "predict", "compare")


def cli(*args, cwd=None):
    """`python -m search ARGS` as a user runs it: its exit code, stdout and stderr.

    The commands run here, through `search.cli.main` (`in_process`), which saves a Python
    start and ~10 s of imports (torch, MONAI, Ray, MLflow) per call. `run`, `repeat` and
    `crossval` connect to the session's Ray (`shared_ray`, as a user's `RAY_ADDRESS` makes
    it) instead of starting one of their own, which takes seconds per call; the trials run in
    that Ray's workers, as ever. With `RAY_ADDRESS` set (a cluster of the developer's), those
    three run in a subprocess on it instead. A search whose trials must see the test's
    environment (fault injection, S3) goes through `cli_for_trials`; one that a test signals
    runs in a subprocess on the session's Ray (`cli_process`). The tests of a local Ray's own
    start-up and stop start their CLI themselves, with a Ray of its own."""
    if args[0] in IN_PROCESS:
        return in_process(*args, cwd=cwd)
    if "RAY_ADDRESS" not in os.environ:
        return in_process(*args, cwd=cwd, env={**os.environ, "RAY_AUTH_MODE": "disabled",
                                               "RAY_ADDRESS": shared_ray()})
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd or ROOT,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                          capture_output=True, text=True, timeout=600)


def cli_for_trials(env: dict[str, str], *args):
    """`cli(*args)` for a command whose trials must see `env` (fault injection, an S3
    endpoint): in this process on the session's Ray, `env` in this driver's environment and,
    through the job's runtime environment, in its trials' workers (`on_shared_ray`). With
    `RAY_ADDRESS` set, in a subprocess with a Ray of its own, which inherits `env`."""
    full = {**os.environ, "RAY_AUTH_MODE": "disabled", **env}
    if "RAY_ADDRESS" in os.environ:
        local = ["--address", "local"] if args[0] == "run" else []
        return subprocess.run([sys.executable, "-m", "search", *args, *local], cwd=ROOT,
                              env=full, capture_output=True, text=True, timeout=900)
    return in_process(*args, env=on_shared_ray(full, env))


def cli_process(*args, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m search ARGS` in a process of its own, for a test that signals it (Ctrl-C,
    kill -9) or fills its disk: a driver on the session's Ray, as on a cluster (trials that
    must see `env` get it as in `cli_for_trials`), or with `RAY_ADDRESS` set, on that one
    (a search whose trials must see `env` then on a Ray of its own).
    Its stderr is piped, as text. The tests of a local Ray's own start and stop start theirs
    without this."""
    full = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    if "RAY_ADDRESS" not in os.environ:
        full = on_shared_ray(full, env or {})
    elif env and args[0] == "run":
        args = (*args, "--address", "local")  # a Ray of its own, whose workers inherit env
    return subprocess.Popen([sys.executable, "-m", "search", *args], cwd=ROOT, env=full,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def on_shared_ray(environ: dict[str, str], trials: dict[str, str]) -> dict[str, str]:
    """`environ` for a driver on the session's Ray whose trials' workers get `trials` too,
    through the job's runtime environment (Ray's `RAY_JOB_CONFIG_JSON_ENV_VAR`, through which
    `ray job submit` gives its drivers theirs)."""
    job = {"runtime_env": {"env_vars": trials}} if trials else {}
    return {**environ, **SHARED_RAY_ENV, "RAY_ADDRESS": shared_ray(),
            **({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)} if job else {})}


def in_process(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`search.cli.main(args)` in this process, as `python -m search ARGS` would run it (in
    `cwd`, with the environment `env`): its stdout, its stderr (log lines in the CLI's format
    included) and exit code; the process's working folder, environment, signal handlers,
    logging and torch threads are put back after."""
    import torch  # here, not at the top: after pytest_configure has imported Ray

    from search import stopping
    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # main's basicConfig is a no-op under pytest
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    saved = (os.getcwd(), dict(os.environ), root.level, torch.get_num_threads(),
             {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if "--debug" in args else logging.INFO)  # as main's basicConfig
    try:
        os.chdir(cwd or ROOT)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        stopping._received.clear()  # a signal or stop reason of an earlier call
        stopping._reasons.clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                ray = sys.modules.get("ray")
                if ray is not None and ray.is_initialized():
                    ray.shutdown()  # as the process's exit would: the driver leaves Ray
    finally:
        root.removeHandler(handler)
        cwd_, environ, level, threads, handlers = saved
        os.chdir(cwd_)
        os.environ.clear()
        os.environ.update(environ)
        root.setLevel(level)
        torch.set_num_threads(threads)
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    return subprocess.CompletedProcess(["python", "-m", "search", *args], code, out.getvalue(),
                                       err.getvalue())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_temp_dir() -> str:
    """A Ray temporary folder of a test's own (short: Ray's socket paths must fit in 107
    bytes). Ray then writes its `ray_current_cluster` there, not in /tmp/ray: a `ray.init()`
    elsewhere on the machine never finds the test's cluster, nor the test another's."""
    return tempfile.mkdtemp(prefix="segray-", dir="/tmp")


# The session's Ray listens on loopback only, as a local run's does (search.stopping); a driver
# then needs the same switch to connect to it (else Ray turns 127.0.0.1 into the machine's
# address, where nothing listens).
SHARED_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def start_ray(temp_dir: str, *options: str, env=None, log: str = "ray-start.log"
              ) -> subprocess.Popen:
    """`ray start --block OPTIONS` in `temp_dir`, once its node is up. SIGTERM to the process
    it returns stops every process of that node and nothing else (unlike `ray stop`, which
    stops every Ray on the machine); see `stop_ray`."""
    env = {**(env or os.environ), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    path = Path(temp_dir) / log
    with open(path, "w") as out:
        block = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
             "--disable-usage-stats", *options],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "Ray runtime started." not in path.read_text():
        if block.poll() is not None or time.monotonic() > deadline:
            block.kill()
            raise RuntimeError(f"ray start {' '.join(options)} failed:\n"
                               f"{path.read_text()[-3000:]}")
        time.sleep(0.2)
    return block


def stop_ray(temp_dir: str, *blocks: subprocess.Popen) -> None:
    """Stop the Ray processes of `temp_dir` only: the `ray start --block` processes get
    SIGTERM (each stops its node's processes), then whatever still names `temp_dir` on its
    command line is killed with every process below it (workers). The folder goes too."""
    for block in blocks:
        if block.poll() is None:
            block.send_signal(signal.SIGTERM)
    for block in blocks:
        try:
            block.wait(timeout=60)
        except subprocess.TimeoutExpired:
            block.kill()
            block.wait()
    children: dict[int, list[int]] = {}
    named = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
        if temp_dir.encode() in cmdline:
            named.append(int(proc.name))
    mine, pid = set(), os.getpid()
    while pid > 1:  # never this process nor its callers (a `ray stop` shim names the folder)
        mine.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
    doomed, todo = set(), [p for p in named if p not in mine]
    while todo:
        pid = todo.pop()
        if pid not in doomed and pid not in mine:
            doomed.add(pid)
            todo += children.get(pid, [])
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in doomed):
        time.sleep(0.1)
        if all(_zombie(p) for p in doomed if Path(f"/proc/{p}").exists()):
            break
    shutil.rmtree(temp_dir, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


_shared: dict[str, object] = {}


def shared_ray() -> str:
    """The address of one Ray for the whole test session, started at the first call (on
    loopback, in a temporary folder of its own; its processes inherit this environment:
    SEGTUNE_CACHE). Stopped at the end of the session (`pytest_unconfigure`)."""
    if "address" not in _shared:
        temp, port = ray_temp_dir(), free_port()
        head = start_ray(temp, "--head", "--port", str(port), "--include-dashboard", "false",
                         env={**os.environ, **SHARED_RAY_ENV})
        _shared.update(temp=temp, head=head, address=f"127.0.0.1:{port}")
    return _shared["address"]


def stop_shared_ray() -> None:
    """Stop the session's Ray, if it runs (the next `cli` call starts it again)."""
    if "head" in _shared:
        stop_ray(_shared["temp"], _shared["head"])
        _shared.clear()


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
