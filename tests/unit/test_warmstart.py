"""`--warm-start` (`search.warmstart`): earlier runs' trials seed the new study; values outside
the new ranges are skipped by name; another task is refused in one line."""

from __future__ import annotations

import logging

import pytest

optuna = pytest.importorskip("optuna")
State = optuna.trial.TrialState

SPEC = """
data: {source: phantom, cases: 6, val_fraction: 0.2, test_fraction: 0.2}
model: {name: unet, channels: [8, 16], strides: [2], num_res_units: 1}
optimizer:
  name: adamw
  lr: {type: float, low: LOW, high: 1.0e-1, log: true}
  beta1: {type: float, low: 0.8, high: 0.95}
train: {epochs: 3, steps_per_epoch: 2, batch_size: 2, patch_size: [16, 16, 16], device: cpu}
search: {num_trials: 4, scheduler: asha, grace_period: 1}
"""


def earlier_run(tmp_path, write_spec, name="old", low="1.0e-3", cases=6):
    """A run folder as a search leaves it (spec.yaml, run.json, optuna.db) with 4 trials:
    COMPLETE lr 0.01 (0.7), PRUNED lr 0.05 (0.4 at epoch 1), COMPLETE lr 0.002 (0.6),
    FAIL lr 0.02."""
    from search.runfolder import RunFolder, RunInfo
    from search.spec import load_spec
    from search.study import study_url
    from search.warmstart import distributions

    spec = load_spec(write_spec(SPEC.replace("LOW", low).replace("cases: 6", f"cases: {cases}"),
                                f"{name}.yaml"))
    folder = RunFolder(tmp_path / name)
    folder.path.mkdir()
    folder.write_spec(spec)
    folder.write_info(RunInfo(name=name))
    study = optuna.create_study(study_name=name, storage=study_url(folder.path),
                                direction="maximize")
    dists = distributions(spec)
    for lr, state, value, steps in [(0.01, State.COMPLETE, 0.7, {1: 0.3, 2: 0.5, 3: 0.7}),
                                    (0.05, State.PRUNED, 0.4, {1: 0.4}),
                                    (0.002, State.COMPLETE, 0.6, {1: 0.2, 2: 0.4, 3: 0.6}),
                                    (0.02, State.FAIL, None, {})]:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"optimizer.lr": lr, "optimizer.beta1": 0.9},
            distributions=dists, intermediate_values=steps))
    return folder.path


def new_spec(write_spec, low="1.0e-3", cases=6):
    from search.spec import load_spec

    return load_spec(write_spec(SPEC.replace("LOW", low).replace("cases: 6", f"cases: {cases}"),
                                "new.yaml"))


def test_earlier_trials_keep_state_value_and_epochs(tmp_path, write_spec):
    from search.warmstart import earlier_trials

    run = earlier_run(tmp_path, write_spec)
    trials = earlier_trials(new_spec(write_spec), [run])
    assert [(t.params["optimizer.lr"], t.state, t.value) for t in trials] == [
        (0.01, State.COMPLETE, 0.7), (0.05, State.PRUNED, 0.4), (0.002, State.COMPLETE, 0.6)]
    assert trials[0].intermediate_values == {1: 0.3, 2: 0.5, 3: 0.7}
    assert all(t.user_attrs["warm_start"] for t in trials)


def test_values_outside_the_new_range_are_skipped_by_name(tmp_path, write_spec, caplog):
    from search.warmstart import earlier_trials

    run = earlier_run(tmp_path, write_spec)
    with caplog.at_level(logging.WARNING, logger="search.warmstart"):
        trials = earlier_trials(new_spec(write_spec, low="5.0e-3"), [run])
    assert [t.params["optimizer.lr"] for t in trials] == [0.01, 0.05]
    assert f"{run} trial 2 skipped: optimizer.lr = 0.002 is outside this search's range " \
           "(0.005 to 0.1)" in caplog.text


def test_another_task_is_refused_in_one_line(tmp_path, write_spec):
    from search.errors import WarmStartError
    from search.warmstart import earlier_trials

    run = earlier_run(tmp_path, write_spec)
    with pytest.raises(WarmStartError) as err:
        earlier_trials(new_spec(write_spec, cases=8), [run])
    assert str(err.value) == (f"--warm-start {run}: a different task (data.cases is 6 there, "
                              "8 here); a warm start needs the same data, model and metric")
    with pytest.raises(WarmStartError, match="not a segtune run folder"):
        earlier_trials(new_spec(write_spec), [tmp_path / "nothing"])


def test_the_searchers_study_holds_the_earlier_trials_and_asks_the_best_first(
        tmp_path, write_spec):
    from search.tuner import make_searcher
    from search.warmstart import earlier_trials

    spec = new_spec(write_spec)
    history = earlier_trials(spec, [earlier_run(tmp_path, write_spec, "a"),
                                    earlier_run(tmp_path, write_spec, "b")])
    searcher = make_searcher(spec, None, "new", history, best_first=1)
    study = searcher._ot_study
    assert len(study.get_trials(states=(State.COMPLETE, State.PRUNED))) == 6
    config = searcher.suggest("t1")  # the best earlier configuration, queued first
    assert config["optimizer.lr"] == pytest.approx(0.01)


def test_cli_run_refuses_a_bad_warm_start_in_one_line(tmp_path, write_spec, capsys):
    from search.cli import main

    spec = write_spec(SPEC.replace("LOW", "1.0e-3"), "run.yaml")
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs"),
                 "--warm-start", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--warm-start {tmp_path / 'nothing'}: not a segtune run folder")
    assert main(["run", str(spec), "--warm-start-best", "2"]) == 2
    assert "--warm-start-best 2: a count >= 0, and only with --warm-start" in \
        capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
