"""Sibling soups' pure parts: the fork epoch, a sibling's spec, the soup's candidates, and
the refusal of a best trial whose checkpoint holds no fork point."""

from __future__ import annotations

import pytest
import torch

from search.errors import SoupError
from search.siblings import fork_state, sibling_seeds
from search.soup import sibling_candidates
from search.spec import Spec
from search.summary import Summary, TrialRecord
from search.trials import fork_epoch, job_spec


def spec_of(epochs: int, siblings: int = 2, fraction: float = 0.5, **extra) -> Spec:
    return Spec.model_validate({"train": {"epochs": epochs},
                                "soup": {"siblings": siblings, "fork_fraction": fraction},
                                **extra})


@pytest.mark.parametrize(("epochs", "siblings", "fraction", "fork"), [
    (16, 3, 0.5, 8), (16, 3, 0.25, 4), (3, 2, 0.34, 1), (4, 1, 0.9, 3), (8, 0, 0.5, None),
    (1, 2, 0.5, None)])
def test_the_fork_point_is_a_fraction_of_the_epochs_before_the_last(epochs, siblings,
                                                                     fraction, fork):
    assert fork_epoch(spec_of(epochs, siblings, fraction)) == fork


def test_no_fork_point_with_cross_validation_in_every_trial():
    assert fork_epoch(spec_of(8, cv={"folds": 2, "mode": "every"})) is None


def test_a_sibling_keeps_the_trials_initial_weights_and_takes_its_own_patch_seed():
    base = spec_of(8)
    sib = job_spec(base, {"config": {}, "seed": 7, "sibling": True})
    rep = job_spec(base, {"config": {}, "seed": 7})
    assert (sib.train.seed, sib.model.init_seed) == (7, base.model.init_seed)
    assert (rep.train.seed, rep.model.init_seed) == (7, 7)  # repeat: a new init too
    assert sibling_seeds(base, 3) == [1, 2, 3]


def test_the_soup_is_the_best_trial_and_its_finished_siblings_best_first():
    best = TrialRecord("t1", val_dice=0.6, checkpoint="t1/c")
    summary = Summary.from_json({"siblings": [
        {"trial_id": "sibling1", "status": "finished", "val_dice": 0.65, "checkpoint": "s/1"},
        {"trial_id": "sibling2", "status": "error", "val_dice": 0.9, "checkpoint": "s/2"},
        {"trial_id": "sibling3", "status": "finished", "val_dice": 0.5, "checkpoint": "s/3"}]})
    assert [t.trial_id for t in sibling_candidates(summary, best)] == [
        "sibling1", "t1", "sibling3"]


def test_a_best_trial_without_the_fork_point_is_refused_by_name(tmp_path):
    from train_fn.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "t1", {"epoch": 2, "model": {"w": torch.zeros(1)}})
    with pytest.raises(SoupError, match=r"trial t1: its checkpoint t1 \(epoch 2\) holds no "
                                        r"fork point at epoch 4"):
        fork_state(tmp_path, TrialRecord("t1", checkpoint="t1"), 4)
    save_checkpoint(tmp_path / "t2", {"epoch": 6, "fork": {"epoch": 4, "model": {}}})
    assert fork_state(tmp_path, TrialRecord("t2", checkpoint="t2"), 4)["epoch"] == 4
