"""The Optuna study persisted in the run folder (`search.study`); the study of a real search and
its plots are in tests/e2e/test_e2e_study.py."""

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
    assert study.metric_names == ["val_dice"]  # optuna-dashboard's label of the objective
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
