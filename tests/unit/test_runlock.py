from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import ROOT

from search.errors import RunInUse
from search.runlock import lock_path, run_lock

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


def _links(tmp_path, kind):
    """A lock path that is a link (soft or hard) to a file of the user's, or a folder."""
    target = tmp_path / "important.txt"
    target.write_text("keep me\n")
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    path = lock_path(run)
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "hard link":
        os.link(target, path)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "made-by-the-lock")
    else:
        path.mkdir()
    return run, path, target


@pytest.mark.parametrize("kind, said", [
    ("symlink", "a symbolic link, not a lock file"),
    ("dangling symlink", "a symbolic link, not a lock file"),
    ("hard link", "a hard link, not a lock file"),
    ("folder", "is a directory, not a lock file"),
])
def test_a_lock_path_that_is_no_regular_file_is_refused_and_its_target_kept(tmp_path, kind,
                                                                             said):
    from search.errors import StorageError

    run, path, target = _links(tmp_path, kind)
    with pytest.raises(StorageError, match=rf"^{path}: {said}; the lock must be a regular"):
        with run_lock(run):
            pass
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "made-by-the-lock").exists()
    assert path.is_symlink() or path.exists()  # left for the user to look at


def test_the_cli_refuses_a_linked_lock_in_one_line_with_exit_2(tmp_path):
    run, path, target = _links(tmp_path, "symlink")
    proc = subprocess.run([sys.executable, "-m", "search", "soup", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"segtune: error: {path}: a symbolic link, not a lock file; the "
                           "lock must be a regular file; remove it (or pick another --name "
                           "or --storage)\n")
    assert target.read_text() == "keep me\n"
