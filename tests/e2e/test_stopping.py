"""Ctrl-C and SIGTERM sent to the real CLI at the moments that matter, and what a local Ray
exposes on the network: real processes, real signals, sockets read from /proc."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, cli_process, free_port, start_ray, stop_ray
from test_browser import check_ray_dashboard
from test_e2e import cli, runs_by_trial

pytestmark = pytest.mark.e2e


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (pid -> its start time, to tell a reused pid apart)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents.setdefault(int(fields[1]), []).append(child)
        starts[child] = fields[19]
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def alive(processes: dict[int, str]) -> list[int]:
    left = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            left.append(pid)
    return left


def listening(pids) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket of these processes."""
    addresses = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not Path(table).exists():  # a kernel without IPv6
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":  # LISTEN
                continue
            host = cols[1].split(":")[0]
            if v6:  # 32 hex digits, four little-endian words
                raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, 32, 8))
                addr = ipaddress.IPv6Address(raw)
                text = str(addr.ipv4_mapped or addr)
            else:
                text = ".".join(str(b) for b in bytes.fromhex(host)[::-1])
            addresses[cols[9]] = text
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in addresses:
                found.append((pid, addresses[link[8:-1]]))
    return found


def start(args, storage, **extra: str):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "search", "run", *args, "--storage",
                             str(storage)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)


def wait_for(proc, text: str) -> list[str]:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}:\n" + "".join(seen[-40:]))


def test_a_local_run_starts_its_own_ray_on_loopback_and_sigterm_stops_it_leaving_nothing(
        tmp_path):
    """A run without `--address` or `RAY_ADDRESS` starts a Ray of its own. Ray's own default
    (`ray.init()`) would join the newest cluster started on the machine, found through
    `<RAY_TMPDIR>/ray/ray_current_cluster`: here one of 64 CPUs that a `ray start` left
    running. The run's Ray listens on loopback only, its dashboard names the trials' actors
    and the job (`check_ray_dashboard`), its stderr on a pipe has no colour codes and none of
    Ray's INFO lines, and SIGTERM stops the search cleanly and leaves no process of it."""
    base = Path(tempfile.mkdtemp(prefix="segtmp-", dir="/tmp"))  # Ray's socket paths are short
    (base / "ray").mkdir()
    temp_dir = str(base / "ray")
    stray = start_ray(temp_dir, "--head", "--num-cpus", "64", "--port", str(free_port()),
                      "--include-dashboard", "false")
    proc = None
    try:
        assert (base / "ray" / "ray_current_cluster").exists()
        storage = tmp_path / "runs"
        proc = start(["spaces/smoke.yaml", "--name", "term", "--set", "train.epochs=6",
                      "--set", "search.scheduler=fifo", "--set", "lr_finder.enabled=false",
                      "--set", "tracking.plots=false"], storage, RAY_TMPDIR=str(base))
        seen = "".join(wait_for(proc, " epoch 1/6"))
        assert "Connecting to existing Ray cluster" not in seen
        # What the terminal shows: no colour codes on a pipe, none of Ray's INFO lines.
        assert "\x1b[" not in seen and " INFO " not in seen, seen
        check_ray_dashboard(seen, tmp_path / "profile", tmp_path)
        assert f"search.api: Ray: 1 node(s), {float(os.cpu_count())} CPUs, 0 GPUs" in seen, seen
        ray_processes = descendants(proc.pid)
        assert len(ray_processes) >= 3  # gcs_server, raylet, trial workers, agents
        sockets = listening([proc.pid, *ray_processes])
        assert sockets, "no listening socket found: the check would pass vacuously"
        exposed = [(pid, a) for pid, a in sockets if a not in ("127.0.0.1", "::1")]
        assert not exposed, f"a local run listens beyond loopback: {exposed}"

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
        took = time.monotonic() - sent
        deadline = time.monotonic() + 20
        while alive(ray_processes) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80]
                for pid in alive(ray_processes)}
    finally:
        if proc is not None and proc.poll() is None:  # a failed check above: no CLI left over
            proc.kill()
            proc.wait()
        stop_ray(temp_dir, stray)  # and the processes of the CLI's Ray, in the same folder
        shutil.rmtree(base, ignore_errors=True)
    assert code == 143, rest[-3000:]
    assert took < 60, f"took {took:.0f} s to stop"
    assert "segtune: search interrupted with" in rest
    assert "continue it with: python -m search run spaces/smoke.yaml --name term" in rest
    assert "Traceback" not in rest and "Stack trace" not in rest, rest[-3000:]
    _, parents, children, runs = runs_by_trial(storage, "term")
    assert {r.info.status for r in runs} == {"KILLED"}
    assert len(parents) == 1 and children
    assert not left, f"processes left 20 s after the CLI exited: {left}"


@pytest.fixture
def small_disk(tmp_path):
    """A 2.6 MB file system of its own (tmpfs): the search's default MLflow store takes 1 MB,
    each smoke checkpoint 110 kB."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_search_in_one_line_and_resume_finishes(small_disk):
    import torch

    args = ["spaces/smoke.yaml", "--name", "full", "--set", "train.epochs=4",
            "--set", "search.scheduler=fifo", "--set", "lr_finder.enabled=false",
            "--set", "tracking.plots=false", "--set", "soup.enabled=false",
            "--set", "train.val_hd95=false"]
    proc = cli_process("run", *args, "--storage", str(small_disk))
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"segtune: error: {small_disk / 'full'}: not enough space left on "
                           "the device ("), err[-3000:]
    assert "continue with: python -m search run spaces/smoke.yaml --name full" in last
    assert len(err.splitlines()) < 60, err  # not pages of MLflow and Ray tracebacks
    # Every checkpoint in the run folder is whole; every MLflow run is closed.
    checkpoints = list((small_disk / "full").glob("*/checkpoint_*/checkpoint.pt"))
    assert checkpoints
    for path in checkpoints:
        torch.load(path, weights_only=True)
    _, _, children, runs = runs_by_trial(small_disk, "full")
    assert {r.info.status for r in runs} == {"FAILED"}

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = cli("run", *args, "--storage", str(small_disk), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((small_disk / "full" / "summary.json").read_text())
    assert {t["status"] for t in summary["trials"]} == {"completed"}
    assert {t["trial_id"] for t in summary["trials"]} == set(children)  # none lost or new
    assert {r.info.status for r in runs_by_trial(small_disk, "full")[3]} == {"FINISHED"}


def test_sigterm_outside_tune_raises_stopped_and_exits_143():
    # Outside Tuner.fit (data check, scoring) SIGTERM is a KeyboardInterrupt of its own kind,
    # so every `finally` runs; the exit code says which signal came.
    from search import stopping

    stopping.install()
    try:
        with pytest.raises(stopping.Stopped):
            signal.raise_signal(signal.SIGTERM)
        assert stopping.received() == signal.SIGTERM and stopping.exit_code() == 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stopping._received.clear()


def test_tune_fit_gives_back_the_handlers_that_ray_tune_leaves_installed():
    # Ray Tune's fit() installs SIGINT and SIGUSR1 handlers and keeps them until they fire.
    from ray.tune.tune import _setup_signal_catching

    from search import stopping

    before = {sig: signal.getsignal(sig) for sig in stopping.TUNE_SIGNALS}
    stopping.tune_fit(_setup_signal_catching)
    assert {sig: signal.getsignal(sig) for sig in stopping.TUNE_SIGNALS} == before
    _setup_signal_catching()  # the check can fail: left alone, Tune's handlers stay
    try:
        assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
        assert signal.getsignal(signal.SIGUSR1) != before[signal.SIGUSR1]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_stop_reason_belongs_to_one_search():
    from search import stopping

    stopping.stop_search("disk full")  # no Tune loop running: only remembered
    assert stopping.stop_reason() == "disk full"
    assert stopping.tune_fit(lambda: "done") == "done"
    assert stopping.stop_reason() is None  # the next search starts without it
