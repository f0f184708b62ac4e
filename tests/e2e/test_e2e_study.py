"""A real search's Optuna study (`<run>/optuna.db`) and its plots (`search.plots`), end to end:
TPE + ASHA through the CLI, with one trial failing for good."""

from __future__ import annotations

import json

import pytest
from helpers import cli_for_trials, fault_env

optuna = pytest.importorskip("optuna")
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A real smoke search with ASHA: 6 trials of 3 epochs, one at a time, so ASHA's
    decisions and TPE's proposals are the same on every run (here: 2 trials complete, 3 are
    stopped after epoch 1); the first trial fails in epoch 1 for good. The LR test's range
    ends at 0.1, where the smoke spec's trials learn something in 3 epochs."""
    tmp = tmp_path_factory.mktemp("study")
    storage = tmp / "runs"
    proc = cli_for_trials(
        fault_env(f"epoch=1,times=9,dir={tmp / 'faults'},trials=1"),
        "run", "spaces/smoke.yaml", "--storage", str(storage), "--name", "study",
        "--set", "search.num_trials=6", "--set", "train.epochs=3",
        "--set", "search.max_concurrent=1", "--set", "search.max_failures=0",
        "--set", "lr_finder.end_lr=0.1")
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
    names = {"dice_curves", "best_vs_compute", "param_importances", "slice", "greedy_soup",
             "parallel_coordinates", "history", "test_regions"}
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
    others = ["history.png", "parallel_coordinates.png", "param_importances.png", "slice.png",
              "test_regions.png"]
    assert sorted(p.name for p in written) == others
    assert "plots: greedy_soup.png not drawn: RuntimeError: no ink" in caplog.text
    assert "plots: no dice_curves.png: no per-class validation Dice" in caplog.text
    caplog.clear()  # a re-soup (no results): the trials' curves are left as they are
    written = plots.write_plots(run_dir, "study", results=None)
    assert sorted(p.name for p in written) == others
    assert "dice_curves" not in caplog.text
    assert plots.write_plots(tmp_path / "missing", "study", results=[]) == []
    assert "plots: none drawn: FileNotFoundError" in caplog.text
