"""Weight averaging inside a trial (`train.average`): the checkpointed average equals a direct
average of the raw weights it saw, it continues across a resume, and BatchNorm statistics are
the averaged weights' own."""

from __future__ import annotations

import pytest
import torch

from search.spec import Spec
from train_fn.averaging import start_epoch
from train_fn.datasets import find_cases, split_cases
from train_fn.loop import train

TINY = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "novograd", "lr": 0.05, "grad_averaging": True},
    "train": {"epochs": 3, "steps_per_epoch": 2, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu", "val_hd95": False, "average": "swa", "average_fraction": 0.67},
}


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def spec_with(**train) -> Spec:
    return Spec.model_validate({**TINY, "train": {**TINY["train"], **train}})


def run(spec: Spec, split, root, resume=None) -> list[dict]:
    states = []
    train(spec, split, root, report=lambda m, s: states.append(s), resume=resume)
    return states


@pytest.mark.parametrize(("fraction", "epochs", "start"),
                         [(0.25, 16, 12), (0.67, 3, 1), (1.0, 4, 0), (0.01, 5, 4)])
def test_the_average_covers_the_last_fraction_of_the_epochs(fraction, epochs, start):
    assert start_epoch(fraction, epochs) == start


def test_swa_is_the_mean_of_the_epoch_end_weights_it_covers(phantom_root, split):
    states = run(spec_with(), split, phantom_root)
    assert "averaged" not in states[0] and "avg/val_dice" not in states[0]["metrics"]
    avg = states[-1]["averaged"]
    assert avg["kind"] == "swa" and avg["start_epoch"] == 2 and avg["count"] == 2
    assert 0 <= states[-1]["metrics"]["avg/val_dice"] <= 1
    for key, value in avg["model"].items():
        if value.is_floating_point():
            mean = (states[1]["model"][key].double() + states[2]["model"][key]) / 2
            torch.testing.assert_close(value, mean.float(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(avg["model"]["model.0.conv.unit0.conv.weight"],
                           states[-1]["model"]["model.0.conv.unit0.conv.weight"])


def test_schedule_free_ema_averages_the_x_points_once_per_epoch(phantom_root, split):
    """Schedule-free: the EMA takes the evaluated point x at each epoch's end (what each
    checkpoint's `model` is), with the decay per epoch: torch's EMA recursion on those."""
    spec = Spec.model_validate({
        **TINY, "optimizer": {"name": "schedulefree_adamw", "lr": 0.01},
        "train": {**TINY["train"], "average": "ema", "ema_decay": 0.6, "average_fraction": 1.0}})
    states = run(spec, split, phantom_root)
    assert states[-1]["averaged"]["count"] == 3
    for key, value in states[-1]["averaged"]["model"].items():
        if value.is_floating_point() and "running" not in key:
            ema = states[0]["model"][key].double()
            for s in states[1:]:
                ema = 0.6 * ema + 0.4 * s["model"][key].double()
            torch.testing.assert_close(value, ema.float(), rtol=1e-5, atol=1e-6)


def test_the_average_continues_across_a_resume(phantom_root, split):
    """Resumed after epoch 2 (one epoch averaged), epoch 3 adds to that average: the
    checkpoint's average is the mean of epoch 2's saved weights and epoch 3's."""
    first = run(spec_with(), split, phantom_root)[:2]
    resumed = run(spec_with(), split, phantom_root, resume=first[1])
    assert [s["epoch"] for s in resumed] == [3]
    avg = resumed[0]["averaged"]
    assert avg["count"] == 2
    key = "model.0.conv.unit0.conv.weight"
    torch.testing.assert_close(avg["model"][key],
                               (first[1]["model"][key] + resumed[0]["model"][key]) / 2)


def test_a_trials_averaged_weights_are_a_soup_ingredient_of_their_own(tmp_path):
    """Ranked by their own validation Dice among the trials; loaded from the checkpoint's
    `averaged` entry."""
    from search.soup import weights_of, with_averages
    from search.summary import TrialRecord
    from train_fn.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "t1", {"model": {"w": torch.zeros(2)},
                                      "averaged": {"model": {"w": torch.ones(2)}}})
    trials = [TrialRecord("t1", val_dice=0.6, avg_val_dice=0.7, checkpoint="t1"),
              TrialRecord("t2", val_dice=0.65, checkpoint="t2")]
    ranked = with_averages(trials)
    assert [t.trial_id for t in ranked] == ["t1:avg", "t2", "t1"]
    assert weights_of(tmp_path, ranked[0])["w"].tolist() == [1.0, 1.0]
    assert weights_of(tmp_path, ranked[2])["w"].tolist() == [0.0, 0.0]
