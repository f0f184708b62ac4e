"""The Optuna study persisted in the run folder (`search.study`), and the run's plots
(`search.plots`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, fault_env

optuna = pytest.importorskip("optuna")
State = optuna.trial.TrialState


def space(trial):
    return {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
            "wd": trial.suggest_float("wd", 0.0, 0.1)}


def searcher(tmp_path, budget=3):
    from search.study import StudySearch, study_url

    return StudySearch(space, metric="val_dice", mode="max",
                       sampler=optuna.samplers.RandomSampler(seed=0), url=study_url(tmp_path),
                       study_name="run", budget=budget)


def report(search, trial_id, values, start=1):
    """Report epochs `start`.. as Ray does: every result but the last to on_trial_result;
    the last (the one the scheduler stopped the trial on, or its final one) is returned, for
    on_trial_complete."""
    results = [{"val_dice": v, "epoch": i, "training_iteration": i}
               for i, v in enumerate(values, start=start)]
    for result in results[:-1]:
        search.on_trial_result(trial_id, result)
    return results[-1]


def test_states_and_best_values_reach_the_sqlite_study(tmp_path):
    search = searcher(tmp_path)
    for trial_id in "abcde":
        search.suggest(trial_id)
    # a: ran its budget, best epoch not the last; b: stopped by the scheduler after 2 of 3
    # epochs; c: errored after a report; d: a NaN then nothing; e: removed before it ran.
    search.on_trial_complete("a", report(search, "a", [0.2, 0.6, 0.5]))
    search.on_trial_complete("b", report(search, "b", [0.3, 0.1]))
    search.on_trial_result("c", report(search, "c", [0.4]))
    search.on_trial_complete("c", error=True)
    search.on_trial_complete("d", report(search, "d", [float("nan")]))
    search.on_trial_complete("e")
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL,
                                         State.PRUNED, State.PRUNED]
    assert [t.value for t in trials] == [0.6, 0.3, None, None, None]
    # Intermediate values: the best so far at each epoch (Ray's training_iteration).
    assert trials[0].intermediate_values == {1: 0.2, 2: 0.6, 3: 0.6}
    assert trials[1].intermediate_values == {1: 0.3, 2: 0.3}
    assert trials[2].intermediate_values == {1: 0.4}
    assert study.best_trial.number == 0
    assert [t.user_attrs["ray_trial_id"] for t in trials] == list("abcde")


def test_a_restored_searcher_continues_the_same_study(tmp_path):
    search = searcher(tmp_path)
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", report(search, "a", [0.2, 0.4, 0.5]))
    search.on_trial_result("b", report(search, "b", [0.1]))
    search.save(str(tmp_path / "searcher.pkl"))
    search.suggest("c")  # asked after Ray's last save: Ray will never run it

    again = searcher(tmp_path)  # as Tuner.restore builds it, then loads Ray's saved state
    again.restore(str(tmp_path / "searcher.pkl"))
    # b resumes from its epoch-1 checkpoint: epoch 2 and 3 come in.
    again.on_trial_complete("b", report(again, "b", [0.7, 0.3], start=2))
    again.suggest("d")
    again.on_trial_complete("d", report(again, "d", [0.2, 0.3, 0.4]))
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")) == 1
    trials = study.get_trials()
    assert [(t.number, t.state, t.value) for t in trials] == [
        (0, State.COMPLETE, 0.5), (1, State.COMPLETE, 0.7), (2, State.FAIL, None),
        (3, State.COMPLETE, 0.4)]
    assert trials[1].intermediate_values == {1: 0.1, 2: 0.7, 3: 0.7}


def test_an_errored_trial_that_ray_resumes_goes_on_in_a_new_optuna_trial(tmp_path):
    search = searcher(tmp_path)
    search.suggest("a")
    search.on_trial_result("a", report(search, "a", [0.2, 0.3]))
    search.on_trial_complete("a", error=True)
    search.save(str(tmp_path / "searcher.pkl"))

    again = searcher(tmp_path)
    again.restore(str(tmp_path / "searcher.pkl"))  # Ray resumes "a" from its epoch-1 checkpoint
    again.on_trial_complete("a", report(again, "a", [0.25, 0.4], start=2))
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path}/optuna.db")
    failed, resumed = study.get_trials()
    assert (failed.state, resumed.state, resumed.value) == (State.FAIL, State.COMPLETE, 0.4)
    assert resumed.params == failed.params
    assert resumed.user_attrs["ray_trial_id"] == "a"
    assert resumed.intermediate_values == {1: 0.2, 2: 0.3, 3: 0.4}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A real smoke search with ASHA: 6 trials of 3 epochs, one at a time, so ASHA's
    decisions and TPE's proposals are the same on every run (here: 2 trials complete, 3 are
    stopped after epoch 1); the first trial fails in epoch 1 for good. The LR test's range
    ends at 0.1, where the smoke spec's trials learn something in 3 epochs."""
    tmp = tmp_path_factory.mktemp("study")
    storage = tmp / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "search", "run", "spaces/smoke.yaml", "--storage", str(storage),
         "--name", "study", "--set", "search.num_trials=6", "--set", "train.epochs=3",
         "--set", "search.max_concurrent=1", "--set", "search.max_failures=0",
         "--set", "lr_finder.end_lr=0.1"],
        cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled",
                       **fault_env(f"epoch=1,times=9,dir={tmp / 'faults'},trials=1")},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage, storage / "study", proc


@pytest.mark.e2e
def test_the_study_holds_every_trial_with_its_state_and_best_value(study_run):
    storage, run_dir, _ = study_run
    summary = json.loads((run_dir / "summary.json").read_text())
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{run_dir}/optuna.db")
    trials = study.get_trials()
    assert len(trials) == len(summary["trials"]) == 6
    records = {t["trial_id"]: t for t in summary["trials"]}
    state_of = {"completed": State.COMPLETE, "stopped": State.PRUNED, "error": State.FAIL}
    for trial in trials:
        record = records[trial.user_attrs["ray_trial_id"]]
        assert trial.params == record["config"]
        assert trial.state == state_of[record["status"]]
        if trial.state == State.FAIL:
            assert trial.value is None
        else:  # the best epoch's val_dice: the checkpoint kept, ranked and souped
            assert trial.value == pytest.approx(record["val_dice"], abs=1e-12)
            assert len(trial.intermediate_values) == record["epochs"]
    states = [t.state for t in trials]
    assert states.count(State.FAIL) == 1 and states.count(State.PRUNED) >= 1
    assert states.count(State.COMPLETE) >= 2  # enough for the importance plot
    assert study.best_value == pytest.approx(summary["best"]["val_dice"])


@pytest.mark.e2e
def test_every_plot_is_drawn_and_logged(study_run):
    from mlflow.tracking import MlflowClient

    storage, run_dir, proc = study_run
    names = {"dice_curves", "best_vs_compute", "param_importances", "slice", "greedy_soup"}
    for name in names:
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 10_000, name
    assert (run_dir / "lr_finder_plot.png").stat().st_size > 10_000
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    parent = client.get_run(json.loads((run_dir / "run.json").read_text())["parent_run_id"])
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert logged == {f"plots/{name}.png" for name in names}
    assert "not drawn" not in proc.stderr


@pytest.mark.e2e
def test_a_figure_that_fails_is_skipped_with_a_warning(study_run, tmp_path, monkeypatch,
                                                       caplog):
    import logging
    import shutil

    from search import plots

    run_dir = tmp_path / "study"
    shutil.copytree(study_run[1], run_dir, ignore=shutil.ignore_patterns("plots", "trial_*"))

    def broken(summary):
        raise RuntimeError("no ink")

    monkeypatch.setattr(plots, "greedy_soup", broken)
    caplog.set_level(logging.INFO, logger="search.plots")
    written = plots.write_plots(run_dir, "study", results=[])
    assert sorted(p.name for p in written) == ["param_importances.png", "slice.png"]
    assert "plots: greedy_soup.png not drawn: RuntimeError: no ink" in caplog.text
    assert "plots: no dice_curves.png: no per-class validation Dice" in caplog.text
    caplog.clear()  # a re-soup (no results): the trials' curves are left as they are
    written = plots.write_plots(run_dir, "study", results=None)
    assert sorted(p.name for p in written) == ["param_importances.png", "slice.png"]
    assert "dice_curves" not in caplog.text
    assert plots.write_plots(tmp_path / "missing", "study", results=[]) == []
    assert "plots: none drawn: FileNotFoundError" in caplog.text
