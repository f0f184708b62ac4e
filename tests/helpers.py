"""What the tests share besides fixtures: the CLI run in this process or as a subprocess
(`cli`, `cli_for_trials`, `cli_process`, `in_process`), the session's shared Ray
(`shared_ray`), Ray nodes of a test's own (`start_ray`, `stop_ray`), fault injection
(`fault_env`). Fixtures and pytest hooks are in conftest.py; test files import this as
`helpers` (pytest puts tests/ on the path)."""

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULT_HOOK = ROOT / "tests" / "fault_hook"
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Ray this Python runs


def product_modules(root: Path = ROOT):
    """`(path relative to root, parsed module)` of every Python file of search/ and
    train_fn/ (the product code the source-shape tests read)."""
    import ast

    for package in ("search", "train_fn"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            yield rel, ast.parse(path.read_text(), rel)


def fault_env(setting: str) -> dict[str, str]:
    """Environment for trials that fail as SEGTUNE_FAULT says (`cli_for_trials`; see
    tests/fault_hook/sitecustomize.py: injected from outside, segtune reads none of it)."""
    path = os.pathsep.join(p for p in (str(FAULT_HOOK), os.environ.get("PYTHONPATH")) if p)
    return {"SEGTUNE_FAULT": setting, "PYTHONPATH": path}


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
    # Each node's dashboard agent listens on 52365 unless told otherwise: with another Ray on
    # the machine (the other test worker's), it retried that port for seconds, and on a busy
    # machine the raylet gave up waiting for the agent (the node failed to start).
    options = (*options, "--dashboard-agent-listen-port", str(free_port()))
    path = Path(temp_dir) / log
    for attempt in (1, 2):
        with open(path, "w") as out:
            block = subprocess.Popen(
                [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir",
                 temp_dir, "--disable-usage-stats", *options],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while "Ray runtime started." not in path.read_text():
            if block.poll() is not None or time.monotonic() > deadline:
                block.kill()
                text = path.read_text()
                if attempt == 1 and "--head" in options and "timed out during startup" in text:
                    # Ray gives its raylet 30 s to register; a machine busy with other work
                    # took longer. Once more, from scratch (a head: nothing else in the
                    # folder yet).
                    stop_ray(temp_dir)
                    Path(temp_dir).mkdir(parents=True)
                    break
                raise RuntimeError(f"ray start {' '.join(options)} failed:\n{text[-3000:]}")
            time.sleep(0.2)
        else:
            return block
    raise AssertionError("unreachable")


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
