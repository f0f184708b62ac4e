"""What runs in a Ray worker (`search.trainable`), outside Ray: the device a trial is granted,
the per-fold training of `cv.mode: every` with its reports and its resume, the fold means,
and a plain trial to its last epoch (Ray's session calls are no-ops outside a trial; the
searches in tests/e2e run them inside one)."""

from __future__ import annotations

import warnings

import pytest

from search.spec import Spec
from search.trainable import _run_folds, fold_means, granted_device, run_trial
from train_fn.datasets import find_cases, split_cases

TINY = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "novograd", "lr": 0.05, "grad_averaging": True},
    "train": {"epochs": 1, "steps_per_epoch": 2, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu", "val_hd95": False},
}


@pytest.fixture(scope="module")
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


@pytest.mark.parametrize("device, gpu, expected", [
    ("auto", 0.0, "cpu"),  # no GPU asked of Ray: never the first GPU, uncounted
    ("auto", 0.5, "auto"),
    ("cuda", 0.0, "cuda"),
    ("cpu", 1.0, "cpu"),
])
def test_a_trial_runs_on_the_device_ray_granted(device, gpu, expected):
    spec = Spec.model_validate({"train": {"device": device}, "resources": {"gpu": gpu}})
    assert granted_device(spec).train.device == expected
    assert spec.train.device == device  # the spec itself is frozen, unchanged


def test_fold_means_average_scores_loss_and_grad_norm_only():
    folds = [{"val_dice": 0.2, "val_dice/heart": 0.4, "val_hd95/heart": 10.0, "loss": 1.0,
              "grad_norm": 2.0, "lr/head": 0.1, "epoch": 3},
             {"val_dice": 0.4, "val_dice/heart": 0.8, "val_hd95/heart": 20.0, "loss": 0.5,
              "grad_norm": 4.0, "lr/head": 0.1, "epoch": 3}]
    assert fold_means(folds) == pytest.approx({"val_dice": 0.3, "val_dice/heart": 0.6,
                                               "val_hd95/heart": 15.0, "loss": 0.75,
                                               "grad_norm": 3.0})


def test_cv_every_reports_the_mean_over_the_folds_done_and_resumes_at_the_next_fold(
        phantom_root, split):
    spec = Spec.model_validate({**TINY, "cv": {"folds": 2, "mode": "every"}})
    split = {**split, "train": split["train"][:2]}  # 3 cases in 2 folds: fewer to validate
    reports = []
    state = _run_folds(spec, split, phantom_root, None,  # each state as its checkpoint holds it
                       lambda m, s: reports.append((m, {**s, "folds": list(s["folds"])})))
    assert [m["epoch"] for m, _ in reports] == [1, 2]  # epochs count folds
    first, last = reports[0][0], reports[1][0]
    assert first["val_dice"] == pytest.approx(first["fold0/val_dice"])
    assert last["val_dice"] == pytest.approx((last["fold0/val_dice"] + last["fold1/val_dice"])
                                             / 2)
    assert last["fold0/val_dice"] == pytest.approx(first["fold0/val_dice"])
    assert state["epoch"] == 2 and len(state["folds"]) == 2
    assert state["metrics"] == {k: v for k, v in last.items() if k != "epoch"}

    again = []  # a retry after fold 1: fold 0 is kept, fold 1 trains again
    resumed = _run_folds(spec, split, phantom_root, reports[0][1],
                         lambda m, s: again.append(m))
    assert [m["epoch"] for m in again] == [2]
    assert again[0]["fold0/val_dice"] == pytest.approx(first["fold0/val_dice"])
    assert again[0]["fold1/val_dice"] == pytest.approx(last["fold1/val_dice"])
    assert len(resumed["folds"]) == 2


def test_a_trial_outside_ray_trains_to_its_last_epoch(phantom_root, split):
    spec = Spec.model_validate({**TINY, "train": {**TINY["train"], "device": "auto",
                                                  "epochs": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray: report() outside a Tuner returns None
        state = run_trial(spec, split, str(phantom_root))
    assert state["epoch"] == 2 and state["trial_id"] is None
    assert state["config"]["train.device"] == "cpu"  # as granted: no GPU asked of Ray
