"""The driver's Ray Tune callbacks (`search.callbacks`) fed trial events as Ray calls them,
against a real MLflow store: a trial's nested run from start to end, its status note and log
lines, retries, a full disk stopping the search, retrain jobs' runs. Ray's `Trial` is stood
in for by the attributes the callbacks read."""

from __future__ import annotations

import logging
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from search import stopping
from search.callbacks import JobCallback, MlflowCallback
from search.spec import Spec
from search.tracking import Tracker

SPEC = Spec.model_validate({
    "optimizer": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
    "train": {"epochs": 3}, "search": {"num_trials": 3, "max_concurrent": 1}})


@dataclass
class Trial:
    """What the callbacks read of Ray's `Trial`."""

    trial_id: str
    path: str
    config: dict[str, Any] = field(default_factory=lambda: {"optimizer.lr": 0.01})
    status: str = "PENDING"
    last_result: dict[str, Any] | None = None
    error: str | None = None

    def get_error(self) -> str | None:
        return self.error


@pytest.fixture(autouse=True)
def no_stop_reason():
    handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # not inside Tune's fit()
    stopping._reasons.clear()
    yield
    stopping._reasons.clear()
    signal.signal(signal.SIGINT, handler)


@pytest.fixture
def tracker(store, tmp_path):
    tracker = Tracker(store, "exp", "run", tmp_path / "run")
    tracker.start_parent(SPEC.flat(), list(SPEC.searched()))
    return tracker


def run_of(tracker: Tracker, trial_id: str):
    return tracker.client.get_run(tracker.trial_runs[trial_id])


def report(callback: MlflowCallback, trial: Trial, epochs: int) -> None:
    trial.status = "RUNNING"
    for n in range(1, epochs + 1):
        callback.on_trial_result(0, [trial], trial, {"epoch": n, "loss": 1.0 / n,
                                                     "val_dice": 0.1 * n})


def test_a_trial_that_ran_its_epochs_is_one_finished_run(tracker, tmp_path, caplog):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"), config={"optimizer.lr": 0.01, "lr@x": 1})
    with caplog.at_level(logging.INFO, logger="search.callbacks"):
        callback.on_trial_start(0, [trial], trial)
        assert run_of(tracker, "t1").info.status == "RUNNING"
        report(callback, trial, 3)
        callback.on_trial_complete(0, [trial], trial)
    run = run_of(tracker, "t1")
    assert run.info.status == "FINISHED"
    assert run.data.tags["segtune.status"] == "completed"
    assert run.data.params["optimizer.lr"] == "0.01"  # the sampled value, not the range
    assert run.data.tags["segtune.searched_params"] == "optimizer.lr"  # Ray's own names left out
    assert run.data.metrics["val_dice"] == pytest.approx(0.3)
    messages = [r.getMessage() for r in caplog.records]
    assert "trial t1 started: optimizer.lr=0.01" in messages
    # each epoch and trial line ends with how long it took, e.g. "(0s)"
    assert any(m.startswith("trial t1 epoch 3/3: loss 0.333, val_dice 0.300 (") for m in messages)
    assert any(m.startswith("trial t1 completed after epoch 3/3 (") for m in messages)
    assert messages[-1].startswith("status: 0 running, 1 completed, 0 stopped, 0 errored, 2 "
                                   "pending of 3 trials"), messages[-1]


def test_a_trial_the_scheduler_stopped_says_so(tracker, tmp_path, caplog):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"))
    callback.on_trial_start(0, [trial], trial)
    with caplog.at_level(logging.INFO, logger="search.callbacks"):
        report(callback, trial, 1)
        callback.on_trial_complete(0, [trial], trial)
    assert run_of(tracker, "t1").data.tags["segtune.status"] == "stopped early"
    assert "trial t1 stopped by the scheduler at epoch 1/3: val_dice 0.1000" in caplog.text


def test_a_trial_restored_at_its_last_epoch_counts_as_completed(tracker, tmp_path):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"), last_result={"epoch": 3})
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_complete(0, [trial], trial)  # no result in this session
    assert run_of(tracker, "t1").data.tags["segtune.status"] == "completed"


def test_a_trial_that_asked_to_stop_keeps_its_reason(tracker, tmp_path):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"))
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, {"epoch": 1, "val_dice": 0.0,
                                                 "stop_reason": "diverged"})
    callback.on_trial_complete(0, [trial], trial)
    assert run_of(tracker, "t1").data.tags["segtune.status"] == "diverged"


def test_a_retry_is_counted_on_the_same_run(tracker, tmp_path):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"), error="ValueError: boom")
    callback.on_trial_start(0, [trial], trial)
    run_id = tracker.trial_runs["t1"]
    callback.on_trial_recover(0, [trial], trial)
    callback.on_trial_recover(0, [trial], trial)
    callback.on_trial_start(0, [trial], trial)
    assert tracker.trial_runs["t1"] == run_id
    assert run_of(tracker, "t1").data.tags["segtune.retries"] == "2"
    assert stopping.stop_reason() is None  # an ordinary error retries


def test_a_trial_failed_by_a_full_disk_stops_the_search(tracker, tmp_path):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"),
                  error="OSError: [Errno 28] No space left on device: 'checkpoint.pt'")
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_error(0, [trial], trial)
    assert stopping.stop_reason() == "disk full"
    run = run_of(tracker, "t1")
    assert (run.info.status, run.data.tags["segtune.status"]) == ("FAILED", "error")


def test_a_full_mlflow_store_stops_the_search_and_another_error_raises(tracker, tmp_path,
                                                                       monkeypatch):
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"))
    callback.on_trial_start(0, [trial], trial)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(tracker, "end_trial", full)
    callback.on_trial_complete(0, [trial], trial)  # no exception into Ray Tune's loop
    assert stopping.stop_reason() == "disk full"

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(tracker, "end_trial", broken)
    with pytest.raises(ValueError, match="a bug"):
        callback.on_trial_complete(0, [trial], trial)


@pytest.mark.parametrize("checkpoint_of_free, stops", [(0.0, False), (1.0, True)])
def test_the_search_stops_while_the_disk_has_room_for_the_next_checkpoints(
        tracker, tmp_path, checkpoint_of_free, stops):
    import shutil

    folder = tmp_path / "t1" / "checkpoint_000001"
    folder.mkdir(parents=True)
    with open(folder / "checkpoint.pt", "wb") as f:  # sparse: its size, none of its space
        f.truncate(int(shutil.disk_usage(tmp_path).free * checkpoint_of_free) + 1)
    Path(tracker.run_dir).mkdir(parents=True)
    callback = MlflowCallback(tracker, SPEC)
    trial = Trial("t1", str(tmp_path / "t1"))
    callback.on_trial_start(0, [trial], trial)
    report(callback, trial, 1)
    assert stopping.stop_reason() == ("disk full" if stops else None)


@pytest.mark.parametrize("reason, status", [(None, "KILLED"), ("disk full", "FAILED")])
def test_the_end_of_the_experiment_closes_the_runs_left_open(tracker, tmp_path, reason,
                                                              status):
    callback = MlflowCallback(tracker, SPEC)
    trials = [Trial(f"t{i}", str(tmp_path / f"t{i}")) for i in range(2)]
    for trial in trials:
        callback.on_trial_start(0, trials, trial)
    report(callback, trials[0], 3)
    callback.on_trial_complete(0, trials, trials[0])
    if reason:
        stopping.stop_search(reason)
    callback.on_experiment_end(trials)
    assert run_of(tracker, "t0").info.status == "FINISHED"
    assert run_of(tracker, "t1").info.status == status
    assert tracker.client.get_run(tracker.parent_id).info.status == "RUNNING"  # the caller's


def test_a_retrain_job_gets_a_named_run_with_its_source_trial(tracker, tmp_path):
    jobs = {"seed1": {"config": {"optimizer.lr": 0.02}, "trial": "t7", "seed": 1}}
    callback = JobCallback(tracker, SPEC, jobs, "repeat")
    trial = Trial("j1", str(tmp_path / "j1"), config={"job": "seed1"})
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_complete(0, [trial], trial)
    run = run_of(tracker, "j1")
    assert run.info.run_name == "run/repeat/seed1"
    assert (run.data.tags["segtune.kind"], run.data.tags["segtune.job"],
            run.data.tags["segtune.source_trial"]) == ("repeat", "seed1", "t7")
    assert (run.data.params["optimizer.lr"], run.data.params["train.seed"]) == ("0.02", "1")
    assert (run.info.status, run.data.tags["segtune.status"]) == ("FINISHED", "completed")
