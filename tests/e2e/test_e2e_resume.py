"""A search whose trials fail (retried, or failed for good), and one stopped by Ctrl-C and by
kill -9 and resumed: the real CLI, Ray and MLflow on spaces/smoke.yaml. (Beside test_e2e.py, so
that the test workers run these slow searches and those of the finished smoke run at once.)"""

from __future__ import annotations

import json
import signal

import pytest
from helpers import cli, cli_for_trials, cli_process, fault_env
from test_e2e import runs_by_trial

pytestmark = pytest.mark.e2e


def test_a_failing_trial_is_retried_and_one_that_keeps_failing_is_failed(tmp_path):
    # The first trial fails once at epoch 2 and is retried from its epoch-1 checkpoint; the
    # second keeps running out of memory: a clear error of that trial, never a hang, and the
    # search goes on.
    storage = tmp_path / "runs"
    env_fault = f"epoch=2,times=1/9,kind=error/oom,dir={tmp_path / 'faults'},trials=2"
    proc = cli_for_trials(fault_env(env_fault), "run", "spaces/smoke.yaml", "--storage",
                          str(storage), "--name", "failing", "--set", "search.max_failures=1",
                          "--set", "search.scheduler=fifo", "--set", "tracking.plots=false",
                          "--set", "lr_finder.enabled=false", "--set", "soup.enabled=false",
                          "--set", "train.val_hd95=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((storage / "failing" / "summary.json").read_text())
    by_status = {t["status"]: t for t in summary["trials"]}
    assert set(by_status) == {"completed", "error"}
    error = ("OutOfMemory: out of memory in epoch 2 (training): lower train.batch_size (2), "
             "train.patch_size ([32, 32, 16]), or run fewer trials at a time "
             "(search.max_concurrent 2) [injected out of memory at epoch 2 (SEGTUNE_FAULT)]")
    assert by_status["error"]["error"] == error
    assert f"Errors:\n  {by_status['error']['trial_id']}: {error}" in proc.stdout
    assert summary["best"]["trial_id"] == by_status["completed"]["trial_id"]
    client, parents, children, runs = runs_by_trial(storage, "failing")
    assert len(children) == 2 and len(runs) == 3  # each retry reused its trial's MLflow run
    failed, retried = children[by_status["error"]["trial_id"]], \
        children[by_status["completed"]["trial_id"]]
    assert failed.info.status == "FAILED" and failed.data.tags["segtune.retries"] == "1"
    assert retried.info.status == "FINISHED" and retried.data.tags["segtune.retries"] == "1"
    assert parents[0].info.status == "FINISHED"
    # Resumed from the epoch-1 checkpoint: epoch 1 was not trained (or logged) twice.
    history = client.get_metric_history(retried.info.run_id, "val_dice")
    assert [m.step for m in history] == [1, 2]


def _interrupt_as_trial_starts(proc, number: int, seen: set[str], sig) -> set[str]:
    """Read the search's log until its `number`-th trial (counted with `seen`, the trials
    started before) starts, after at least one trial finished in this process; then send
    `sig`. Returns the trials this process started (resumed ones too)."""
    finished, started = set(), set()
    for line in proc.stderr:
        if "search.callbacks: trial " not in line:
            continue
        trial_id = line.split("trial ")[1].split()[0]
        if "epoch 4/4" in line:
            finished.add(trial_id)
        if " started: " in line:
            started.add(trial_id)
            if len(seen | started) == number:  # it starts only once a slot is free
                break
    assert finished, f"no trial finished before trial {number} started"
    # Its MLflow run exists now; Ray may not have saved the trial yet. After a kill -9 then,
    # the resume deletes that run (Ray starts another trial in its place): none is orphaned.
    proc.send_signal(sig)
    return started


def _saved_done(run_dir) -> set[str]:
    """The trials Ray had saved as finished when the search stopped: never trained again.
    (A kill -9 may land after a trial's last epoch was reported, its line printed, but before
    Ray saved it: that epoch is the one in flight, and is redone.)"""
    from search.storage import newest_experiment_state

    state = newest_experiment_state(str(run_dir)) or {}
    return {json.loads(t[0])["trial_id"] for t in state.get("trial_data", [])
            if json.loads(t[0]).get("status") == "TERMINATED"}


def test_an_interrupted_search_resumes_without_losing_or_redoing_work(tmp_path):
    """One search stopped twice: Ctrl-C as its third trial starts, then kill -9 of the resumed
    search as its fourth starts; the second resume finishes it. Each stop loses no finished
    work and redoes at most the epoch in flight."""
    storage = tmp_path / "runs"
    args = ["spaces/smoke.yaml", "--storage", str(storage), "--name", "resumed",
            "--set", "train.epochs=4", "--set", "search.scheduler=fifo",
            "--set", "search.num_trials=4", "--set", "lr_finder.enabled=false",
            "--set", "tracking.plots=false", "--set", "soup.enabled=false",
            "--set", "train.val_hd95=false"]
    stops = []  # per stop: (trials its process started, trials Ray had saved as finished)
    for sig, number in ((signal.SIGINT, 3), (signal.SIGKILL, 4)):
        proc = cli_process("run", *args, *(["--resume"] if stops else []))
        started = _interrupt_as_trial_starts(proc, number,
                                             set().union(*(s for s, _ in stops)), sig)
        rest = proc.stderr.read()
        code = proc.wait(timeout=300)
        assert code == (130 if sig == signal.SIGINT else -9), rest[-3000:]
        if sig == signal.SIGINT:
            assert "segtune: search interrupted with" in rest
            assert "continue it with: python -m search run spaces/smoke.yaml --name resumed" \
                in rest
            _, _, _, runs = runs_by_trial(storage, "resumed")
            assert "RUNNING" not in {r.info.status for r in runs}  # a graceful stop closes all
        assert not (storage / "resumed" / "summary.json").exists()
        stops.append((started, _saved_done(storage / "resumed")))

    again = cli("run", *args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((storage / "resumed" / "summary.json").read_text())
    assert len(summary["trials"]) == 4
    assert {t["status"] for t in summary["trials"]} == {"completed"}
    # The same Optuna study went on: one trial per Ray trial, each COMPLETE with its best
    # epoch's val_dice, none asked twice.
    import optuna

    study = optuna.load_study(study_name="resumed",
                              storage=f"sqlite:///{storage / 'resumed' / 'optuna.db'}")
    assert len(optuna.get_all_study_names(f"sqlite:///{storage / 'resumed' / 'optuna.db'}")) == 1
    by_id = {t["trial_id"]: t for t in summary["trials"]}
    kept = [t for t in study.trials if t.user_attrs.get("ray_trial_id") in by_id]
    assert sorted(t.user_attrs["ray_trial_id"] for t in kept) == sorted(by_id)
    # A trial killed before Ray saved it is closed FAIL (a new one took its place); a Ctrl-C
    # leaves none.
    unsaved = [t for t in study.trials if t not in kept]
    assert len(unsaved) <= 1
    assert all(t.state == optuna.trial.TrialState.FAIL for t in unsaved)
    for trial in kept:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(by_id[trial.user_attrs["ray_trial_id"]]["val_dice"])
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    client, parents, children, runs = runs_by_trial(storage, "resumed")
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5  # none duplicated
    assert set(children) == {t["trial_id"] for t in summary["trials"]}  # none orphaned
    assert {r.info.status for r in runs} == {"FINISHED"}
    for trial_id, run in children.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
        assert sorted(set(steps)) == [1, 2, 3, 4]
        # At most the epoch in flight at each stop that found the trial started and not
        # saved as finished is redone; a finished trial is not trained again.
        redone = sum(trial_id in started and trial_id not in done for started, done in stops)
        if not redone:
            assert steps == [1, 2, 3, 4]
        else:
            assert len(steps) - len(set(steps)) <= redone
