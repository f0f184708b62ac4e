"""The Optuna study persisted in the run folder (`search.study`), and the run's plots
(`search.plots`)."""

from __future__ import annotations

import pytest

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


def report(search, trial_id, values):
    for i, value in enumerate(values, start=1):
        search.on_trial_result(trial_id, {"val_dice": value, "epoch": i,
                                          "training_iteration": i})
    return {"val_dice": values[-1], "epoch": len(values), "training_iteration": len(values)}


def test_states_and_best_values_reach_the_sqlite_study(tmp_path):
    search = searcher(tmp_path)
    for trial_id in "abcde":
        search.suggest(trial_id)
    # a: ran its budget, best epoch not the last; b: stopped by the scheduler after 2 of 3
    # epochs; c: errored after a report; d: a NaN then nothing; e: removed before it ran.
    search.on_trial_complete("a", report(search, "a", [0.2, 0.6, 0.5]))
    search.on_trial_complete("b", report(search, "b", [0.3, 0.1]))
    report(search, "c", [0.4])
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
    assert study.best_trial.number == 0


def test_a_restored_searcher_continues_the_same_study(tmp_path):
    search = searcher(tmp_path)
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", report(search, "a", [0.2, 0.4, 0.5]))
    report(search, "b", [0.1])
    search.save(str(tmp_path / "searcher.pkl"))
    search.suggest("c")  # asked after Ray's last save: Ray will never run it

    again = searcher(tmp_path)  # as Tuner.restore builds it, then loads Ray's saved state
    again.restore(str(tmp_path / "searcher.pkl"))
    again.on_trial_complete("b", report(again, "b", [0.1, 0.7, 0.3]))
    again.suggest("d")
    again.on_trial_complete("d", report(again, "d", [0.2, 0.3, 0.4]))
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")) == 1
    trials = study.get_trials()
    assert [(t.number, t.state, t.value) for t in trials] == [
        (0, State.COMPLETE, 0.5), (1, State.COMPLETE, 0.7), (2, State.FAIL, None),
        (3, State.COMPLETE, 0.4)]
    assert trials[1].intermediate_values == {1: 0.1, 2: 0.7, 3: 0.7}
