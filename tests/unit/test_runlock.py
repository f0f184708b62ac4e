from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import ROOT

from search.runlock import RunInUse, lock_path, run_lock

HOLD = """
import sys, time
from search.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_holder_at_a_time_and_the_file_goes_with_it(tmp_path):
    run = tmp_path / "runs" / "a"
    with run_lock(run) as path:
        assert path == (tmp_path / "runs" / ".a.lock").resolve() == lock_path(run)
        assert path.read_text() == f"{os.getpid()}\n"
        assert not run.exists()  # taken before the folder is made
    assert not path.exists()
    with run_lock(run):  # free again
        pass


def test_a_killed_holder_leaves_a_stale_file_and_a_free_lock(tmp_path):
    run = tmp_path / "a"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=rf"\(pid {proc.pid}, holding "):
            with run_lock(run):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(run).read_text() == f"{proc.pid}\n"  # left behind by the kill
    with run_lock(run) as path:
        assert path.read_text() == f"{os.getpid()}\n"
