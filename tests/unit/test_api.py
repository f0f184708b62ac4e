"""Error paths of `run`, `--resume` and `soup` that stop before Ray starts, by message."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT

from search.cli import main

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtune: error: ") and err.count("\n") == 1
    return err


def test_resume_without_a_run(tmp_path, capsys):
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path), "--resume"])
    assert "nothing to resume (no run.json: the search never started); run without --resume" \
        in err


def test_resume_before_ray_saved_anything_starts_the_run(tmp_path, capsys):
    """A folder a start left before Ray Tune saved anything is started, not refused ("nothing
    to resume"): here it then stops at the data check, before Ray (issue 30 item 5)."""
    from search.api import _plain
    from search.spec import load_spec

    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "run.json").write_text(
        json.dumps({"input_spec": _plain(load_spec(SMOKE).flat())}))
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path), "--resume",
                            "--set", "data.source=segthor",
                            "--set", f"data.root={tmp_path / 'SegTHOR'}"])
    assert f"{tmp_path / 'SegTHOR'}: no such folder" in err
    assert (tmp_path / "smoke" / "run.json").is_file()  # removed under the lock only


KILLED_AT_START = """
import os, signal, sys
from pathlib import Path
from search import api
from search.spec import load_spec

spec = load_spec(sys.argv[1], ["lr_finder.enabled=false"])
storage = Path(sys.argv[2])
api._start(spec, sys.argv[1], "smoke", storage, storage / "smoke", None)
os.kill(os.getpid(), signal.SIGKILL)  # after run.json and the MLflow parent run
"""


def test_a_start_killed_after_run_json_is_neither_stuck_nor_left_running(tmp_path, capsys):
    """kill -9 after spec.yaml, split.json, run.json and the MLflow parent run: the dry run
    says the folder will be started afresh, and the next run (or --resume), under the lock,
    marks the parent run KILLED and removes the folder (issue 30 item 5)."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from search import api

    storage = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_START, SMOKE, str(storage)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_dir = storage / "smoke"
    assert {"spec.yaml", "split.json", "run.json"} <= {p.name for p in run_dir.iterdir()}
    info = json.loads((run_dir / "run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    assert client.get_run(info["parent_run_id"]).info.status == "RUNNING"
    assert main(["run", SMOKE, "--storage", str(storage), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {run_dir}  (left by a run stopped before its first trial: it " \
        "starts afresh)" in out
    assert api._unstarted(run_dir)
    api._check_new(run_dir, "smoke", None)  # before the lock: no error, nothing removed
    assert run_dir.is_dir()
    api._check_new(run_dir, "smoke", None, clear=True)
    assert not run_dir.exists()
    assert client.get_run(info["parent_run_id"]).info.status == "KILLED"


def test_a_finished_or_foreign_folder_is_never_taken_for_an_unstarted_one(tmp_path):
    from search import api

    mine = tmp_path / "smoke"
    mine.mkdir()
    (mine / "notes.txt").write_text("my files")
    assert not api._unstarted(mine)
    (mine / "spec.yaml").write_text("x: 1\n")
    (mine / "trial_0001").mkdir()  # a trial: Ray's state, however damaged, is kept
    assert not api._unstarted(mine)


def test_missing_real_data_folder(tmp_path, capsys):
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path / "runs"),
                            "--set", "data.source=segthor",
                            "--set", f"data.root={tmp_path / 'SegTHOR'}"])
    assert f"{tmp_path / 'SegTHOR'}: no such folder" in err
    assert not (tmp_path / "runs").exists()


def test_too_few_patients_for_a_split(tmp_path, capsys):
    for i in (1, 2):
        case = tmp_path / "SegTHOR" / "train" / f"Patient_0{i}"
        case.mkdir(parents=True)
        (case / f"Patient_0{i}.nii.gz").touch()
        (case / "GT.nii.gz").touch()
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path / "runs"),
                            "--set", "data.source=segthor",
                            "--set", f"data.root={tmp_path / 'SegTHOR'}"])
    assert "need at least 3 cases for a train/val/test split, got 2" in err


@pytest.mark.parametrize("override, message", [
    ("lr_finder.skip_start=20",
     "lr_finder.skip_start (20) leaves fewer than 5 of lr_finder.num_iter (15) points"),
    ("model.blocks_up=[1, 1]", "model.blocks_up is not an option of model.name 'unet'"),
])
def test_spec_rules_through_set(tmp_path, capsys, override, message):
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path), "--set", override])
    assert message in err


def test_blocks_up_must_match_blocks_down(write_spec):
    from search.spec import SpecError, load_spec

    path = write_spec("model:\n  name: segresnet\n  blocks_down: [1, 2, 2]\n"
                      "  blocks_up: [1, 1, 1]\n")
    with pytest.raises(SpecError, match=r"model.blocks_up needs one entry fewer than "
                                        r"model.blocks_down \(3\), got 3"):
        load_spec(path)


def test_soup_of_a_run_that_never_finished(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    err = error_of(capsys, ["soup", str(tmp_path)])
    assert "no summary.json (not a finished segtune run folder)" in err


def test_soup_with_only_failed_trials(tmp_path, capsys):
    from search.soup import SoupError, finish

    (tmp_path / "summary.json").write_text(json.dumps({"trials": [
        {"trial_id": "a", "status": "error", "checkpoint": "trial_a/checkpoint_000000",
         "val_dice": 0.5, "error": "OutOfMemory: out of GPU memory in epoch 1"}]}))
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "spec.yaml").write_text((ROOT / "spaces" / "smoke.yaml").read_text())
    with pytest.raises(SoupError, match="no trial finished an epoch with a checkpoint "
                                        "without erroring; the trials' errors: OutOfMemory: "
                                        "out of GPU memory in epoch 1$"):
        finish(tmp_path)


def test_a_gpu_device_needs_a_gpu_share(tmp_path, capsys):
    # Refused before anything is written or started.
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path), "--set",
                            "train.device=cuda"])
    assert err.startswith("segtune: error: train.device is cuda but resources.gpu is 0: a "
                          "trial that asks Ray for no GPU may not use one")
    assert not any(tmp_path.iterdir())


def test_auto_device_means_the_cpu_in_a_trial_without_a_gpu_share():
    from search.spec import Spec
    from search.trainable import granted_device

    assert granted_device(Spec()).train.device == "cpu"
    shared = Spec.model_validate({"resources": {"gpu": 0.25}})
    assert granted_device(shared).train.device == "auto"
    assert granted_device(Spec.model_validate({"train": {"device": "cpu"}})).train.device \
        == "cpu"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_fails_at_once_and_writes_nothing(tmp_path, capsys):
    import time

    import ray

    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path / "runs"),
                            "--tracking-uri", uri])
    assert time.monotonic() - start < 30
    assert f"--tracking-uri {uri}: no MLflow tracking server answers there (" in err
    assert "start the server, or pick another tracking URI" in err
    assert not (tmp_path / "runs" / "smoke").exists()
    assert not ray.is_initialized()
    # The same from the spec's tracking.uri, named by the spec file.
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path / "runs"),
                            "--set", f"tracking.uri={uri}"])
    assert f"{SMOKE}: tracking.uri {uri}: no MLflow tracking server answers there" in err


def test_resume_checks_the_tracking_server_first(tmp_path, capsys, monkeypatch):
    from ray import tune

    from search.api import _plain
    from search.spec import load_spec

    uri = f"http://127.0.0.1:{_closed_port()}"
    run_json = tmp_path / "smoke" / "run.json"
    run_json.parent.mkdir()
    run_json.write_text(json.dumps({"input_spec": _plain(load_spec(SMOKE).flat()),
                                    "tracking_uri": uri, "experiment": "smoke",
                                    "name": "smoke", "parent_run_id": "0" * 32}))
    monkeypatch.setattr(tune.Tuner, "can_restore", staticmethod(lambda path: True))
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path), "--resume"])
    assert f"{run_json}: tracking_uri {uri}: no MLflow tracking server answers there" in err


def test_a_run_that_fails_before_its_first_trial_leaves_no_folder(tmp_path, capsys,
                                                                  monkeypatch):
    import ray

    import search.api as api

    # No Ray needed up to the MLflow store: pretend it is up and large enough.
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(api, "check_resources", lambda spec: None)
    runs = tmp_path / "runs"

    class StoreDown:
        def __init__(self, *args):
            assert (runs / "smoke" / "spec.yaml").is_file()  # written by then
            raise api.SpecError("the store went down")

    monkeypatch.setattr(api, "Tracker", StoreDown)
    argv = ["run", SMOKE, "--storage", str(runs), "--set", "lr_finder.enabled=false",
            "--set", f"data.root={tmp_path / 'phantom'}", "--set", "data.cache=false"]
    assert "the store went down" in error_of(capsys, argv)
    assert not (runs / "smoke").exists() and not runs.exists()  # nothing left behind
    # Neither "already exists" nor "nothing to resume": the name starts afresh.
    assert "the store went down" in error_of(capsys, argv)
    (runs / "smoke").mkdir(parents=True)  # an empty folder given by the user stays
    assert "the store went down" in error_of(capsys, argv)
    assert (runs / "smoke").is_dir() and not any((runs / "smoke").iterdir())


HOLD = """
import sys, time
from search.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run_dir):
    """A second process holding the run folder through the same function."""
    import subprocess
    import sys

    from helpers import ROOT

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_folder_is_held_by_one_process(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "smoke").mkdir(parents=True)
    (runs / "smoke" / "run.json").write_text("{}")
    holder = _holder(runs / "smoke")
    try:
        lock = (runs / ".smoke.lock").resolve()
        expected = (f"{runs / 'smoke'}: in use by another segtune process (pid {holder.pid}, "
                    f"holding {lock}); wait for it to end, or pick another --name or --storage")
        assert error_of(capsys, ["run", SMOKE, "--storage", str(runs), "--resume"]) == \
            f"segtune: error: {expected}\n"
        (runs / "smoke" / "run.json").unlink()  # a new run is refused the same way
        assert expected in error_of(capsys, ["run", SMOKE, "--storage", str(runs),
                                             "--set", f"data.root={tmp_path / 'phantom'}"])
        assert not any((runs / "smoke").iterdir())
    finally:
        holder.kill()
        holder.wait()
    # The lock of a killed process is free: the run gets past it (to its own next error).
    err = error_of(capsys, ["run", SMOKE, "--storage", str(runs), "--resume"])
    assert "nothing to resume (no run.json" in err


@pytest.mark.parametrize("argv", [["soup"], ["evaluate"], ["repeat", "--seeds", "1"],
                                  ["crossval"], ["compare", "--baseline", "b.csv"]],
                         ids=lambda argv: argv[0])
def test_commands_on_a_run_folder_wait_for_its_holder(tmp_path, capsys, monkeypatch, argv):
    run = tmp_path / "runs" / "smoke"
    run.mkdir(parents=True)
    holder = _holder(run)
    try:
        monkeypatch.chdir(run)  # "." is the same folder, and the same lock
        err = error_of(capsys, [argv[0], ".", *argv[1:]])
        assert f": in use by another segtune process (pid {holder.pid}, holding " \
            f"{(run.parent / '.smoke.lock').resolve()})" in err
    finally:
        holder.kill()
        holder.wait()
    # Free again: the command gets past the lock, to its own error (no run.json / spec.yaml).
    assert "in use" not in error_of(capsys, [argv[0], ".", *argv[1:]])


def test_resume_refuses_a_ray_state_the_disk_cut_short(tmp_path, capsys):
    from search.api import _plain
    from search.spec import load_spec

    run = tmp_path / "smoke"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"input_spec": _plain(load_spec(SMOKE).flat())}))
    (run / "experiment_state-2026-11-29_18-00-00.json").write_text('{"trial_data": [["{\\"tri')
    (run / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    err = error_of(capsys, ["run", SMOKE, "--storage", str(tmp_path), "--resume"])
    assert f"{run}: Ray's saved experiment state is cut short (the disk filled up or the " \
        "machine stopped while it was written), so the search cannot continue; start it " \
        "again under another --name" in err
