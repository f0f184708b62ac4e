"""search.storage against a local folder and an in-process S3 server (moto)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import ROOT

from search.cli import main
from search.storage import (
    StorageError,
    check_storage,
    experiment_location,
    is_uri,
    join,
    keep_experiment_state,
    load_run_checkpoint,
    newest_experiment_state,
    put_back_experiment_state,
    relative,
    repair_experiment_state,
    saved_trial_ids,
    unfinished_trials,
)
from train_fn.checkpoint import save_checkpoint

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


@pytest.mark.parametrize("storage, expected", [
    ("s3://bucket/runs", True), ("gs://bucket", True), ("hdfs://host:9000/x", True),
    ("runs", False), ("/abs/runs", False), ("./s3:/x", False), (None, False),
])
def test_is_uri(storage, expected):
    assert is_uri(storage) is expected


def test_join_and_relative():
    assert join("s3://b/runs/", "smoke", "trial_1") == "s3://b/runs/smoke/trial_1"
    # Ray reports checkpoint paths inside the store without the scheme.
    assert relative("b/runs/smoke/trial_1/checkpoint_000002", "s3://b/runs/smoke") == \
        "trial_1/checkpoint_000002"
    with pytest.raises(ValueError):
        relative("other/runs/smoke/trial_1", "s3://b/runs/smoke")


def write_run(run_dir, storage_uri=None):
    run_dir.mkdir(parents=True)
    info = {"name": run_dir.name, **({"storage_uri": storage_uri} if storage_uri else {})}
    (run_dir / "run.json").write_text(json.dumps(info))


def test_local_run_reads_its_own_folder(tmp_path):
    run_dir = tmp_path / "smoke"
    write_run(run_dir)
    assert experiment_location(run_dir) == str(run_dir.resolve())
    save_checkpoint(run_dir / "trial_a" / "checkpoint_000001", {"epoch": 3})
    assert load_run_checkpoint(run_dir, "trial_a/checkpoint_000001") == {"epoch": 3}
    assert newest_experiment_state(str(run_dir)) is None
    for stamp, status in (("2026-01-01_10-00-00", "RUNNING"), ("2026-01-02_10-00-00", "DONE")):
        (run_dir / f"experiment_state-{stamp}.json").write_text(json.dumps({"s": status}))
    assert newest_experiment_state(str(run_dir)) == {"s": "DONE"}


def test_unfinished_trials_counts_what_a_resume_would_run(tmp_path):
    # Ray's layout: trial_data holds [trial state as JSON text, run metadata as JSON text].
    # RUNNING, TERMINATED and PENDING are what a real Ctrl-C left (Ray 2.60, 3 trials).
    def state(*statuses):
        return {"trial_data": [[json.dumps({"trial_id": f"t{i}", "status": s}), "{}"]
                               for i, s in enumerate(statuses)], "runner_data": {}}

    assert unfinished_trials(tmp_path) == 0 and saved_trial_ids(tmp_path) == set()
    (tmp_path / "experiment_state-2026-01-01_10-00-00.json").write_text(
        json.dumps(state("TERMINATED", "TERMINATED")))
    assert unfinished_trials(tmp_path) == 0
    (tmp_path / "experiment_state-2026-01-02_10-00-00.json").write_text(
        json.dumps(state("RUNNING", "TERMINATED", "PENDING", "ERROR", "PAUSED")))
    assert unfinished_trials(tmp_path) == 3  # the newest state counts
    assert saved_trial_ids(tmp_path) == {"t0", "t1", "t2", "t3", "t4"}
    # A state the full disk cut short is an error, not "nothing saved".
    (tmp_path / "experiment_state-2026-01-03_10-00-00.json").write_text('{"trial_data": [["')
    with pytest.raises(ValueError):
        newest_experiment_state(str(tmp_path))


def test_a_failed_restore_gets_the_saved_experiment_state_back(tmp_path):
    # What Ray left in a run folder, and what a restore that starts the experiment over
    # writes: a newer, empty state, a new searcher state, tuner.pkl rewritten (issue 30,
    # item 3). The trial folders and segtune's files are not Ray's state: left alone.
    old = {"experiment_state-2026-01-01_10-00-00.json": json.dumps(
               {"trial_data": [[json.dumps({"trial_id": "t0", "status": "RUNNING"}), "{}"]]}),
           "searcher-state-2026-01-01_10-00-00.pkl": "searcher", "tuner.pkl": "tuner",
           "trainable.pkl": "trainable", "spec.yaml": "spec"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "trial_t0").mkdir()
    (tmp_path / "trial_t0" / "result.json").write_text("{}")
    backup = keep_experiment_state(tmp_path)
    assert sorted(p.name for p in backup.iterdir()) == sorted(set(old) - {"spec.yaml"})
    (tmp_path / "experiment_state-2026-01-02_10-00-00.json").write_text('{"trial_data": []}')
    (tmp_path / "searcher-state-2026-01-02_10-00-00.pkl").write_text("new searcher")
    (tmp_path / "tuner.pkl").write_text("new tuner")
    (tmp_path / "trainable.pkl").unlink()
    (tmp_path / "spec.yaml").write_text("spec, edited since")
    assert saved_trial_ids(tmp_path) == set()
    put_back_experiment_state(tmp_path, backup)
    files = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    assert files == {**old, "spec.yaml": "spec, edited since"}
    assert saved_trial_ids(tmp_path) == {"t0"} and not backup.exists()
    assert (tmp_path / "trial_t0" / "result.json").read_text() == "{}"
    assert keep_experiment_state("s3://bucket/runs/x") is None  # nothing kept in a store


def test_a_copy_a_killed_resume_left_is_put_back_only_if_the_trials_were_lost(tmp_path):
    # kill -9 after Ray wrote its new, empty state and before the copy went back: the next
    # --resume puts it back first. A copy beside a state that kept the trials is dropped.
    def state(*ids):
        return json.dumps({"trial_data": [[json.dumps({"trial_id": i}), "{}"] for i in ids]})

    (tmp_path / "experiment_state-2026-01-01_10-00-00.json").write_text(state("t0", "t1"))
    (tmp_path / "tuner.pkl").write_text("tuner")
    backup = keep_experiment_state(tmp_path)
    (tmp_path / "experiment_state-2026-01-02_10-00-00.json").write_text(state())
    assert repair_experiment_state(tmp_path) is True and not backup.exists()
    assert saved_trial_ids(tmp_path) == {"t0", "t1"}
    assert not (tmp_path / "experiment_state-2026-01-02_10-00-00.json").exists()
    backup = keep_experiment_state(tmp_path)
    (tmp_path / "experiment_state-2026-01-03_10-00-00.json").write_text(state("t0", "t1", "t2"))
    assert repair_experiment_state(tmp_path) is False and not backup.exists()
    assert saved_trial_ids(tmp_path) == {"t0", "t1", "t2"}
    assert repair_experiment_state(tmp_path) is False  # no copy: nothing to do


def test_object_store_run_downloads_checkpoints_and_reads_state(tmp_path, bucket):
    import boto3

    client = boto3.client("s3")
    ckpt = tmp_path / "upload"
    save_checkpoint(ckpt, {"model": {"w": torch.ones(2)}, "epoch": 2})
    client.upload_file(str(ckpt / "checkpoint.pt"), bucket,
                       "runs/smoke/trial_a/checkpoint_000001/checkpoint.pt")
    for stamp, status in (("2026-01-02_10-00-00", "new"), ("2026-01-01_10-00-00", "old")):
        client.put_object(Bucket=bucket, Key=f"runs/smoke/experiment_state-{stamp}.json",
                          Body=json.dumps({"s": status}).encode())
    run_dir = tmp_path / "local" / "smoke"
    write_run(run_dir, f"s3://{bucket}/runs")
    location = experiment_location(run_dir)
    assert location == f"s3://{bucket}/runs/smoke"
    state = load_run_checkpoint(run_dir, "trial_a/checkpoint_000001")
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.ones(2))
    assert newest_experiment_state(location) == {"s": "new"}
    assert newest_experiment_state(f"s3://{bucket}/nothing/here") is None
    with pytest.raises(FileNotFoundError, match="trial_b/checkpoint_000001: no checkpoint"):
        load_run_checkpoint(run_dir, "trial_b/checkpoint_000001")


def test_check_storage_accepts_a_bucket_and_names_a_missing_one(bucket):
    check_storage(f"s3://{bucket}/runs")  # the prefix need not exist yet
    with pytest.raises(StorageError, match=r"^--storage s3://no-such-bucket/runs: bucket "
                       r"'no-such-bucket' does not exist"):
        check_storage("s3://no-such-bucket/runs")


def test_check_storage_names_an_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StorageError) as err:
        check_storage("s3://bucket/runs")
    message = str(err.value)
    assert message.startswith("--storage s3://bucket/runs: cannot reach the object store (")
    assert "Could not connect" in message and "\n" not in message


def test_cli_refuses_a_missing_bucket_before_anything_runs(tmp_path, bucket, capsys):
    local = tmp_path / "local"
    assert main(["run", SMOKE, "--storage", "s3://no-such-bucket/runs",
                 "--local-dir", str(local)]) == 2
    err = capsys.readouterr().err
    assert err == ("segtune: error: --storage s3://no-such-bucket/runs: bucket "
                   "'no-such-bucket' does not exist (create it first; segtune does not create "
                   "buckets)\n")
    assert not local.exists()  # nothing prepared, nothing written


def test_local_dir_needs_an_object_store(tmp_path, capsys):
    assert main(["run", SMOKE, "--storage", str(tmp_path), "--local-dir", "x"]) == 2
    assert "--local-dir x: only with an object-store --storage" in capsys.readouterr().err


def test_dry_run_shows_both_places(tmp_path, capsys):
    assert main(["run", SMOKE, "--storage", "s3://b/runs", "--local-dir", str(tmp_path),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {tmp_path / 'smoke'}" in out
    assert "checkpoints: s3://b/runs/smoke" in out
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in out


def test_cli_refuses_an_experiment_already_in_the_store(tmp_path, bucket, capsys):
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Body=b"{}",
                                  Key="runs/smoke/experiment_state-2026-01-01_10-00-00.json")
    local = tmp_path / "local"
    assert main(["run", SMOKE, "--storage", f"s3://{bucket}/runs", "--local-dir", str(local)]) \
        == 2
    assert (f"s3://{bucket}/runs/smoke: a Ray experiment named 'smoke' is already in the "
            "store; pick another --name or --storage") in capsys.readouterr().err
    assert not local.exists()


def test_retrain_refuses_jobs_already_in_the_store(tmp_path, bucket):
    import boto3

    from search.errors import RunFolderError
    from search.retrain import run_jobs

    boto3.client("s3").put_object(
        Bucket=bucket, Body=b"{}",
        Key="runs/smoke/repeat-a-seeds-1-2/experiment_state-2026-01-01_10-00-00.json")
    run_dir = tmp_path / "local" / "smoke"
    write_run(run_dir, f"s3://{bucket}/runs")
    with pytest.raises(RunFolderError, match=rf"^s3://{bucket}/runs/smoke/repeat-a-seeds-1-2: "
                       r"exists \(these jobs ran already\)"):
        run_jobs(run_dir, "repeat", {}, "repeat-a-seeds-1-2")
    assert not (run_dir / "repeat-a-seeds-1-2").exists()


def test_disk_full_is_found_in_causes_wrappers_and_texts(tmp_path):
    import errno
    import sqlite3

    from search.storage import disk_full, remove_cut_checkpoints

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("Ray: the trial failed") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert disk_full(wrapped)
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    assert disk_full("OSError: [Errno 28] Error writing bytes to file")
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(None) and not disk_full("CUDA out of memory")

    import torch

    whole = tmp_path / "trial_a" / "checkpoint_000001" / "checkpoint.pt"
    cut = tmp_path / "trial_b" / "checkpoint_000000" / "checkpoint.pt"
    for path in (whole, cut):
        path.parent.mkdir(parents=True)
        torch.save({"w": torch.ones(1000)}, path)
    cut.write_bytes(cut.read_bytes()[:2000])
    assert remove_cut_checkpoints(tmp_path) == [cut.parent]
    assert whole.is_file() and not cut.parent.exists()
