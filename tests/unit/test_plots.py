"""The figures of a finished search (`search.plots`) from small, known inputs: what each
figure plots, the reason it gives when its data is missing, and `write_plots` drawing what
the run folder has data for without ever raising."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.figure import Figure

from search.plots import (
    _figure,
    best_vs_compute,
    dice_curves,
    greedy_soup,
    histories,
    write_plots,
)
from search.study import study_url
from search.summary import Summary


def frame(trial: int, dice: list[float], start: float = 0.0) -> pd.DataFrame:
    """A trial's per-epoch results as Ray's `Result.metrics_dataframe` holds them."""
    n = len(dice)
    return pd.DataFrame({"epoch": range(1, n + 1), "timestamp": [start + e for e in range(n)],
                         "val_dice": dice, "val_dice/heart": [d + 0.1 for d in dice],
                         "val_dice/aorta": [d - 0.1 for d in dice], "trial": [trial] * n})


def result(trial_id: str | None, df: pd.DataFrame | None, path: str = "/runs/x/trial_0"):
    """What `histories` reads of Ray's `Result`."""
    return SimpleNamespace(metrics_dataframe=df, path=path,
                           metrics={"trial_id": trial_id} if trial_id else {})


SUMMARY = {"metric": "val_dice",
           "trials": [{"trial_id": "a", "status": "completed", "val_dice": 0.5},
                      {"trial_id": "b", "status": "error", "val_dice": 0.4},
                      {"trial_id": "c", "status": "completed", "val_dice": 0.3}],
           "soups": {"greedy": {"steps": [
               {"trial_id": "a", "val_dice": 0.5, "accepted": True},
               {"trial_id": "b", "val_dice": 0.45, "accepted": False},
               {"trial_id": "c", "val_dice": 0.55, "accepted": True}]}}}


def test_histories_keep_an_epochs_last_report_in_epoch_order():
    retried = pd.concat([frame(0, [0.1, 0.2]), frame(0, [0.3, 0.4, 0.5])])  # epochs 1-2 redone
    curves = histories([result("a", retried), result(None, frame(1, [0.2]), "/r/trial_b"),
                        result("c", None), result("d", pd.DataFrame())])
    assert list(curves) == ["a", "trial_b"]  # no frame, or an empty one: no curve
    assert curves["a"]["epoch"].tolist() == [1, 2, 3]
    assert curves["a"]["val_dice"].tolist() == [0.3, 0.4, 0.5]


def test_dice_curves_draw_each_class_and_the_mean_a_line_per_trial():
    curves = {"a": frame(0, [0.1, 0.3]), "b": frame(1, [0.2])}
    fig, reason = dice_curves(curves, {"a": "completed", "b": "error"})
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert reason is None
    assert [ax.get_title() for ax in shown] == ["aorta", "heart", "mean over classes"]
    mean = shown[-1].get_lines()
    assert [line.get_label() for line in mean] == ["a", "b"]
    assert [line.get_linestyle() for line in mean] == ["-", ":"]  # an errored trial dotted
    assert mean[0].get_ydata().tolist() == [0.1, 0.3]


def test_dice_curves_without_per_class_scores_give_a_reason():
    fig, reason = dice_curves({"a": frame(0, [0.1])[["epoch", "val_dice"]]}, {})
    assert fig is None and reason == "no per-class validation Dice in the trials' results"


def test_best_vs_compute_is_the_running_best_in_the_order_epochs_ended():
    curves = {"a": frame(0, [0.2, float("nan"), 0.25], start=0.0),
              "b": frame(1, [0.4, 0.1], start=0.5)}
    fig, reason = best_vs_compute(curves, "val_dice")
    step = fig.axes[0].get_lines()[0]
    # ended in order: a1 0.2, b1 0.4, a2 NaN, b2 0.1, a3 0.25
    assert step.get_xdata().tolist() == [1, 2, 3, 4, 5]
    assert step.get_ydata().tolist() == [0.2, 0.4, 0.4, 0.4, 0.4]
    assert best_vs_compute(curves, "val_hd95") == (None, "no val_hd95 in the trials' results")


def test_greedy_soup_shows_the_soup_as_it_grew():
    fig, reason = greedy_soup(Summary.from_json(SUMMARY))
    ax = fig.axes[0]
    assert ax.get_lines()[0].get_ydata().tolist() == [0.5, 0.5, 0.55]  # b rejected
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "+b", "+c"]
    assert greedy_soup(Summary(soups=None)) == (None, "no greedy soup in summary.json")


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="run", storage=study_url(run), direction="maximize")
    for lr, wd, value in ((0.01, 0.1, 0.3), (0.03, 0.2, 0.5), (0.05, 0.05, 0.4)):
        study.enqueue_trial({"lr": lr, "wd": wd})
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 0.1, log=True)
        trial.suggest_float("wd", 0.0, 0.3)
        study.tell(trial, value)
    return run


def test_write_plots_draws_every_figure_it_has_data_for(run_dir):
    results = [result("a", frame(0, [0.1, 0.3])), result("b", frame(1, [0.2], start=0.5))]
    written = write_plots(run_dir, "run", results)
    assert sorted(p.name for p in written) == [
        "best_vs_compute.png", "dice_curves.png", "greedy_soup.png", "history.png",
        "parallel_coordinates.png", "param_importances.png", "slice.png"]
    assert all(p.stat().st_size > 5000 and p.parent == run_dir / "plots" for p in written)


def test_write_plots_skips_what_fails_and_never_raises(run_dir, caplog):
    (run_dir / "optuna.db").write_text("not a database")
    with caplog.at_level(logging.INFO, logger="search.plots"):
        written = write_plots(run_dir, "run", None)  # a re-soup: no trial results
    assert [p.name for p in written] == ["greedy_soup.png"]
    assert "plots: param_importances.png not drawn:" in caplog.text
    (run_dir / "summary.json").unlink()
    assert write_plots(run_dir, "run", None) == []  # not a finished run: logged, not raised
    assert "plots: none drawn: RunFolderError" in caplog.text


def test_the_figure_of_one_axes_or_an_array_of_them():
    fig = Figure()
    axes = fig.subplots(1, 2)
    assert _figure(axes) is fig and _figure(axes[1]) is fig
    assert _figure(np.array([[axes[0]]])) is fig
