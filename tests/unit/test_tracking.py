"""MLflow runs of a search against a temporary sqlite store, without Ray: best-epoch metrics,
readable search ranges, the stored runs-table view and the result runs of a soup."""

from __future__ import annotations

import json
import math
import pickle

import pytest
from helpers import ROOT

from search import tracking
from search.results import Result, log_results, results_of
from search.summary import Summary
from search.tracking import Tracker, readable_range

REGIONS = ("heart", "aorta")


@pytest.fixture
def tracker(store, tmp_path):
    tracker = Tracker(store, "exp", "run", tmp_path / "run")
    tracker.start_parent({"optimizer.lr": {"type": "float", "low": 1e-3, "high": 0.1,
                                           "log": True}, "train.epochs": 3},
                         ["optimizer.lr"])
    return tracker


def epoch(n: int, dice: float, hd95: bool = False) -> dict:
    """A trial's report of epoch `n`: per-region Dice `dice` and `dice + 0.1`, HD95 when
    scored (the region's value encodes the epoch)."""
    out = {"epoch": n, "loss": 1.0 / n, "val_dice": dice, "lr/head": 0.01,
           "val_dice/heart": dice, "val_dice/aorta": dice + 0.1,
           "training_iteration": n, "time_this_iter_s": 3.0}
    if hd95:
        out.update({f"val_hd95/{r}": 10.0 * n for r in REGIONS})
    return out


def latest(tracker: Tracker, trial_id: str = "t1") -> dict[str, float]:
    return tracker.client.get_run(tracker.trial_runs[trial_id]).data.metrics


def test_best_epoch_metrics_follow_the_best_epoch_not_the_last(tracker):
    tracker.start_trial("t1", {"optimizer.lr": 0.0125}, {"optimizer.lr": 0.0125})
    tracker.log_result("t1", epoch(1, 0.3, hd95=True))
    tracker.log_result("t1", epoch(2, 0.6))
    after_two = latest(tracker)
    assert after_two["best_val_dice"] == 0.6 and after_two["best_epoch"] == 2
    # HD95 was not scored at the best epoch: the epoch-1 value is not shown as the best's.
    assert math.isnan(after_two["best_val_hd95/heart"])
    tracker.log_result("t1", epoch(3, 0.5, hd95=True))
    metrics = latest(tracker)
    assert metrics["val_dice"] == 0.5 and metrics["val_dice/aorta"] == pytest.approx(0.6)
    assert metrics["best_val_dice"] == 0.6 and metrics["best_epoch"] == 2
    assert metrics["best_val_dice/heart"] == 0.6
    assert metrics["best_val_dice/aorta"] == pytest.approx(0.7)
    assert math.isnan(metrics["best_val_hd95/aorta"])
    # val_hd95 per epoch, at the epochs that scored it; Ray's bookkeeping is not a curve.
    history = tracker.client.get_metric_history(tracker.trial_runs["t1"], "val_hd95/heart")
    assert [(m.step, m.value) for m in history] == [(1, 10.0), (3, 30.0)]
    assert "time_this_iter_s" not in metrics and "training_iteration" not in metrics
    # A later better epoch with HD95 shows its own.
    tracker.log_result("t1", epoch(4, 0.8, hd95=True), budget=6)
    metrics = latest(tracker)
    assert (metrics["best_epoch"], metrics["best_val_hd95/heart"]) == (4, 40.0)


def test_a_trial_run_says_its_status_and_the_epochs_it_trained(tracker):
    run_id = tracker.start_trial("t1", {}, {})
    tags = lambda: tracker.client.get_run(run_id).data.tags  # noqa: E731
    assert tags()["segtune.status"] == "running"
    tracker.log_result("t1", epoch(1, 0.3), budget=8)
    tracker.log_result("t1", epoch(2, 0.4), budget=8)
    assert tags()["segtune.epochs"] == "2 of 8"
    tracker.end_trial("t1", "FINISHED", note="stopped early")
    assert tags()["segtune.status"] == "stopped early"


def test_best_epoch_ties_go_to_the_later_epoch_and_a_diverged_report_never_counts(tracker):
    # Ray keeps the later of two equal checkpoints: summary.json's best epoch is the later.
    tracker.start_trial("t1", {}, {})
    tracker.log_result("t1", epoch(1, 0.0))
    tracker.log_result("t1", epoch(2, 0.0))
    assert latest(tracker)["best_epoch"] == 2
    tracker.start_trial("t2", {}, {})
    tracker.log_result("t2", epoch(1, 0.2))
    # A diverged trial's last report: val_dice 0, no per-region scores, no checkpoint.
    tracker.log_result("t2", {"epoch": 2, "loss": float("nan"), "val_dice": 0.0,
                              "stop_reason": "non-finite loss"})
    assert latest(tracker, "t2")["best_val_dice"] == 0.2
    assert latest(tracker, "t2")["best_epoch"] == 1


def test_cv_every_reports_take_the_latest_as_the_best(tracker):
    tracker.start_trial("t1", {}, {})
    tracker.log_result("t1", epoch(1, 0.6), latest=True)
    tracker.log_result("t1", epoch(2, 0.5), latest=True)
    assert (latest(tracker)["best_val_dice"], latest(tracker)["best_epoch"]) == (0.5, 2)


def test_a_resumed_trial_keeps_its_best_epoch(tracker):
    tracker.start_trial("t1", {}, {})
    tracker.log_result("t1", epoch(1, 0.7, hd95=True))
    # Ray restores its callbacks (and this tracker) from a pickle, without the bookkeeping.
    again = pickle.loads(pickle.dumps(tracker))
    again.reopen_parent(tracker.parent_id)
    again.start_trial("t1", {}, {})
    assert again.trial_runs == tracker.trial_runs  # the same run, not a second one
    again.log_result("t1", epoch(2, 0.4))
    metrics = latest(again)
    assert (metrics["best_val_dice"], metrics["best_epoch"]) == (0.7, 1)
    assert metrics["best_val_hd95/heart"] == 10.0


def test_a_trial_run_shows_its_searched_values_as_tag_and_description(tracker):
    tracker.start_trial("t1", {"optimizer.lr": 0.0125, "model.name": "unet",
                               "train.epochs": 3},
                        {"optimizer.lr": 0.012512345, "model.name": "unet"})
    run = tracker.client.get_run(tracker.trial_runs["t1"])
    assert run.data.tags["segtune.searched_values"] == "optimizer.lr=0.01251, model.name=unet"
    assert run.data.tags["mlflow.note.content"] == \
        "searched: optimizer.lr=0.01251, model.name=unet"
    assert run.data.params["optimizer.lr"] == "0.0125"


@pytest.mark.parametrize("leaf, text", [
    ({"type": "float", "low": 0.001, "high": 0.1, "log": True}, "float 0.001..0.1 log"),
    ({"type": "float", "low": 0.1, "high": 0.5, "log": False}, "float 0.1..0.5"),
    ({"type": "float", "low": 0.0, "high": 0.3, "step": 0.1}, "float 0..0.3 step 0.1"),
    ({"type": "int", "low": 1, "high": 8, "log": False, "step": 1}, "int 1..8"),
    ({"type": "int", "low": 2, "high": 8, "step": 2}, "int 2..8 step 2"),
    ({"type": "categorical", "choices": ["adamw", "novograd"]}, "choice [adamw, novograd]"),
    ({"type": "categorical", "choices": [16, 32], "default": 16},
     "choice [16, 32] (default 16)"),
    ([{"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
       "when": {"optimizer.name": "adamw"}},
      {"type": "float", "low": 0.01, "high": 0.1, "when": {"optimizer.name": ["sgd", "lion"]}}],
     "float 0.0001..0.01 log when optimizer.name=adamw; "
     "float 0.01..0.1 when optimizer.name=sgd|lion"),
])
def test_readable_range(leaf, text):
    assert readable_range(leaf) == text


def test_parent_params_show_fixed_values_and_readable_ranges(store, tmp_path):
    from search.spec import load_spec

    spec = load_spec(ROOT / "spaces" / "smoke.yaml")
    tracker = Tracker(store, "smoke", "smoke", tmp_path)
    run_id = tracker.start_parent(spec.flat(), list(spec.searched()))
    params = tracker.client.get_run(run_id).data.params
    assert params["optimizer.lr"] == "float 0.001..0.1 log"
    assert params["layers.early_encoder"] == "float 0.1..0.5"
    assert params["optimizer.beta1"] == "0.95"
    assert params["train.patch_size"] == "[32, 32, 16]"
    # The stored runs-table view: scores and searched params, best validation Dice first.
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    view = json.loads(tags["mlflow.sharedViewState.segtune"])
    assert view["orderByKey"] == "metrics.`best_val_dice`" and view["orderByAsc"] is False
    assert {"metrics.`best_val_dice`", "params.`optimizer.lr`",
            "params.`layers.early_encoder`"} <= set(view["selectedColumns"])
    assert tags["mlflow.experiment.primaryMetric.name"] == "best_val_dice"
    # A trial's status and its epochs are columns: a stopped trial is FINISHED too.
    assert {"tags.`segtune.status`", "tags.`segtune.epochs`"} <= set(view["selectedColumns"])
    # The experiment opens on its training runs, not MLflow's GenAI overview.
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # The chart view starts on best_val_dice, then the validation Dice and the loss.
    first = [c["metricKey"] for c in view["compareRunCharts"]
             if c["metricSectionId"] == view["compareRunSections"][0]["uuid"]]
    assert first == ["best_val_dice", "val_dice", "loss"]
    assert [s["name"] for s in view["compareRunSections"]] == ["search", "val_dice", "lr"]
    assert tracker.view_url() == (
        f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?"
        "workflowType=machine_learning&viewStateShareKey=segtune")
    assert tracking.view_url("http://mlflow:5000/", "7") == (
        "http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning&"
        "viewStateShareKey=segtune")


def summary(best_trial: str = "t1", soups: bool = True) -> Summary:
    per = {"heart": 0.8, "aorta": 0.6}
    record = {"val_dice": 0.7, "val_dice_per_class": per, "test_dice": 0.65,
              "test_dice_per_class": {"heart": 0.75, "aorta": 0.55},
              "test_hd95_per_class": {"heart": 4.0, "aorta": 6.0}}
    out = {"best": {"trial_id": best_trial, "config": {"optimizer.lr": 0.02}, **record},
           "soups": None}
    if soups:
        out["soups"] = {"uniform": {"ingredients": ["t1", "t2"], **record, "val_dice": 0.5},
                        "greedy": {"ingredients": ["t1"], **record, "val_dice": 0.72}}
    return Summary.from_json(out)


def result_runs(tracker: Tracker):
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{tracker.parent_id}'")
    return {r.info.run_name.split("/")[-1]: r for r in runs}


def test_result_runs_hold_the_scores_and_a_resoup_replaces_them(tracker):
    first = log_results(tracker, results_of(summary(), {}))
    runs = result_runs(tracker)
    assert set(runs) == {"best", "uniform", "greedy"}
    best, greedy = runs["best"], runs["greedy"]
    assert best.data.tags["segtune.kind"] == "best" and best.data.tags["segtune.trial"] == "t1"
    assert greedy.data.tags["segtune.kind"] == "soup"
    assert greedy.data.tags["segtune.soup"] == "greedy"
    assert best.data.metrics["test_dice/heart"] == 0.75
    assert best.data.metrics["test_hd95/aorta"] == 6.0
    assert best.data.metrics["val_dice/aorta"] == 0.6
    assert greedy.data.metrics["val_dice"] == 0.72 and greedy.data.metrics["size"] == 1
    assert best.data.params["optimizer.lr"] == "0.02"
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    parent = tracker.client.get_run(tracker.parent_id)
    assert parent.data.tags["segtune.best_trial"] == "t1"

    # A re-soup (here without soups, and another best trial): the old runs go.
    second = log_results(tracker, results_of(summary("t2", soups=False), {}))
    runs = result_runs(tracker)
    assert set(runs) == {"best"} and runs["best"].info.run_id == second["best"]
    assert runs["best"].info.run_id != first["best"]
    assert tracker.client.get_run(first["greedy"]).info.lifecycle_stage == "deleted"
    assert tracker.client.get_run(tracker.parent_id).data.tags["segtune.best_trial"] == "t2"
    # Trial runs under the same parent are not result runs: they stay.
    tracker.start_trial("t9", {}, {})
    log_results(tracker, results_of(summary(), {}))
    assert set(result_runs(tracker)) == {"best", "uniform", "greedy", "t9"}


def test_a_logged_model_loads_and_predicts_and_a_resoup_replaces_it(tracker):
    import mlflow.pytorch
    import numpy as np
    import torch

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    example = np.zeros((1, 1, 8, 8, 4), dtype=np.float32)
    meta = {"segtune": {"patch_size": [8, 8, 4], "preprocessing": {"spacing": [1.5, 1.5, 2]}}}
    for _ in range(2):
        made = log_results(tracker, [Result("best", {"val_dice": 0.5}, weights,
                                            tags={"segtune.kind": "best",
                                                  "segtune.trial": "t1"})],
                           torch.nn.Conv3d(1, 3, 3, padding=1), example, meta,
                           champion="best")
    models = tracker.client.search_logged_models([tracker.experiment_id])
    assert [m.source_run_id for m in models] == [made["best"]]  # the first one's is gone
    assert models[0].name == "best"
    # Registered under the run's name; the first soup's version went with its run.
    versions = tracker.client.search_model_versions("name = 'run'")
    assert [(str(v.version), v.run_id) for v in versions] == [("2", made["best"])]
    assert str(tracker.client.get_model_version_by_alias("run", "champion").version) == "2"
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    try:
        loaded = mlflow.pytorch.load_model(f"models:/{models[0].model_id}")
        info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
        champion = mlflow.pytorch.load_model("models:/run@champion")
    finally:
        mlflow.set_tracking_uri(None)
    x = torch.randn(1, 1, 8, 8, 4)
    assert torch.equal(loaded(x), net(x))  # the weights given, not the net's own
    assert torch.equal(champion(x), net(x))
    assert info.metadata == meta
    assert info.signature is not None  # inferred from the input example
