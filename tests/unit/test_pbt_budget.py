"""Population-based training (`search.scheduler: pbt`) and the run's epoch budget
(`search.budget_epochs`): spec errors by message, PBT's explore kept inside the spec's ranges,
the budget stopper's count, and a trial that continues another configuration's checkpoint
(PBT's exploit) training with its own values, the donor's weights and moments kept."""

from __future__ import annotations

import pytest
import torch

from search.spec import Spec, SpecError
from search.trials import search_epochs
from search.tuner import EpochBudget, InRange, make_scheduler, pbt_space
from train_fn.datasets import find_cases, split_cases
from train_fn.loop import build_schedule, train
from train_fn.optim import adopt_hyperparameters, build_optimizer, param_groups

SPACE = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "schedulefree_adamw",
                  "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  "beta1": {"type": "float", "low": 0.8, "high": 0.95}},
    "schedule": {"warmup_fraction": 0.1},
    "train": {"epochs": 8},
}


def spec_with(**sections) -> Spec:
    tree = {**SPACE}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return Spec.model_validate(tree)


def test_pbt_is_a_scheduler_on_epochs_over_the_searched_ranges():
    spec = spec_with(search={"scheduler": "pbt", "pbt_interval": 3, "num_trials": 4})
    pbt = make_scheduler(spec)
    assert type(pbt).__name__ == "PopulationBasedTraining"
    assert pbt._perturbation_interval == 3 and pbt._time_attr == "training_iteration"
    assert pbt._synch  # the population in step: no member starts after the others ended
    space = pbt_space(spec)
    assert sorted(space) == ["optimizer.beta1", "optimizer.lr"]
    assert (space["optimizer.lr"].lower, space["optimizer.lr"].upper) == (1e-3, 1e-2)


def test_pbt_explore_is_brought_back_inside_each_leafs_range():
    keep = InRange(spec_with(search={"scheduler": "pbt"}))
    # 0.95 x 1.2 is beta1 1.14: no momentum at all; 1e-2 x 1.2 leaves the searched lr range.
    assert keep({"optimizer.beta1": 1.14, "optimizer.lr": 1.2e-2}) == {
        "optimizer.beta1": 0.95, "optimizer.lr": 1e-2}
    assert keep({"optimizer.beta1": 0.9, "optimizer.lr": 4e-3}) == {
        "optimizer.beta1": 0.9, "optimizer.lr": 4e-3}


@pytest.mark.parametrize(("sections", "message"), [
    ({"search": {"scheduler": "pbt", "sampler": "grid"}},
     "search.scheduler pbt draws its population at random: set search.sampler to tpe or "
     "random, or search.scheduler to asha"),
    ({"search": {"scheduler": "pbt", "pbt_interval": 8}},
     r"search.pbt_interval \(8\) must be less than train.epochs \(8\): PBT acts between "
     "epochs"),
    ({"search": {"scheduler": "pbt"}, "cv": {"folds": 2, "mode": "every"}},
     "search.scheduler pbt does not fit cv.mode every"),
    ({"search": {"budget_epochs": 12, "trunk_epochs": 4}, "soup": {"siblings": 2}},
     r"search.budget_epochs \(12\) leaves no epochs to the trials after search.trunk_epochs "
     r"\(4\) and the siblings' epochs \(8\): raise it"),
    ({"search": {"budget_epochs": 20}, "cv": {"folds": 2, "mode": "every"}},
     "search.budget_epochs does not fit cv.mode every"),
])
def test_pbt_and_budget_mistakes_are_one_line_errors(sections, message):
    with pytest.raises((SpecError, ValueError), match=message):
        spec_with(**sections)


def test_pbt_refuses_conditional_leaves_naming_them():
    tree = {**SPACE, "optimizer": {
        "name": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"},
                     "default": 0.9}},
        "schedule": {}, "search": {"scheduler": "pbt"}}
    with pytest.raises((SpecError, ValueError), match="optimizer.momentum: search.scheduler pbt "
                                                      "does not take conditional leaves"):
        Spec.model_validate(tree)


def test_the_budget_left_to_the_search_excludes_the_trunk_and_the_siblings():
    assert search_epochs(spec_with()) is None
    # 40 epochs: a trunk of 2, 3 siblings forked at epoch 4 of 8 (3 x 4), 26 to the trials.
    spec = spec_with(search={"budget_epochs": 40, "trunk_epochs": 2},
                     soup={"siblings": 3, "fork_fraction": 0.5})
    assert search_epochs(spec) == 26


def test_the_budget_stops_every_trial_once_the_epochs_are_spent():
    stop = EpochBudget(5)
    assert not stop("a", {"training_iteration": 1}) and not stop("b", {"training_iteration": 1})
    assert not stop("a", {"training_iteration": 2}) and not stop.stop_all()
    # A result repeated for the same epoch (a restored trial) is not counted twice.
    assert not stop("a", {"training_iteration": 2})
    assert not stop("b", {"training_iteration": 2})
    assert stop("c", {"training_iteration": 1}) and stop.stop_all()
    assert EpochBudget(100, time_limit_s=10)("a", {"training_iteration": 1, "time_total_s": 11})


def _optimizer(spec: Spec, model):
    groups = param_groups(model, spec.model, spec.layers, spec.optimizer.lr)
    return build_optimizer(groups, spec.optimizer, warmup_steps=2)


def test_a_loaded_state_takes_the_trials_own_values_and_keeps_the_moments():
    """Schedule-free AdamW: the exploit's donor had lr 1e-2, beta1 0.8; the trial continues
    with lr 2e-3, beta1 0.95, the donor's step count and second moments."""
    model = torch.nn.Linear(3, 2)
    donor = spec_with(optimizer={"lr": 1e-2, "beta1": 0.8})
    own = spec_with(optimizer={"lr": 2e-3, "beta1": 0.95})
    opt = _optimizer(donor, model)
    opt.train()
    for _ in range(3):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    saved = opt.state_dict()
    fresh_opt = _optimizer(own, model)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in fresh_opt.param_groups]
    fresh_opt.load_state_dict(saved)
    adopt_hyperparameters(fresh_opt, fresh)
    for group in fresh_opt.param_groups:
        assert group["lr"] == pytest.approx(2e-3) and group["betas"][0] == 0.95
        assert group["k"] == 3  # the donor's step count: warmup is not repeated
    for p in model.parameters():
        torch.testing.assert_close(fresh_opt.state[p]["exp_avg_sq"],
                                   opt.state[p]["exp_avg_sq"])


def test_a_scheduled_lr_keeps_its_place_on_the_schedule_scaled_to_the_new_base():
    """AdamW under the warmup-cosine schedule: after 5 of 10 steps the lr is base x f(5); a
    trial with twice the base lr continues at 2 x base x f(5), and so does its schedule."""
    tree = {**SPACE, "optimizer": {"name": "adamw", "lr": 1e-2}, "schedule": {},
            "train": {"epochs": 2, "steps_per_epoch": 5}}
    model = torch.nn.Linear(3, 2)
    donor = Spec.model_validate(tree)
    own = Spec.model_validate({**tree, "optimizer": {"name": "adamw", "lr": 2e-2}})
    opt = _optimizer(donor, model)
    schedule = build_schedule(opt, donor)
    for _ in range(5):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        schedule.step()
    lr_then = opt.param_groups[0]["lr"]
    new_opt = _optimizer(own, model)
    new_schedule = build_schedule(new_opt, own)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in new_opt.param_groups]
    new_opt.load_state_dict(opt.state_dict())
    new_schedule.load_state_dict(schedule.state_dict())
    adopt_hyperparameters(new_opt, fresh, new_schedule)
    assert new_opt.param_groups[0]["lr"] == pytest.approx(2 * lr_then)
    new_schedule.step()
    schedule.step()
    assert new_opt.param_groups[0]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])
    # The same spec (a plain resume): nothing changes.
    same = _optimizer(donor, torch.nn.Linear(3, 2))
    build_schedule(same, donor)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in same.param_groups]
    same.load_state_dict(opt.state_dict())
    adopt_hyperparameters(same, fresh)
    assert same.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def test_a_trial_continues_a_donors_checkpoint_with_its_own_values(phantom_root, split):
    """PBT's exploit at the loop: the donor's epoch-1 state, resumed by a spec with another
    lr, trains epoch 2 from the donor's weights with that lr (lr ~0: the weights stay) on the
    donor's place in the warmup-cosine schedule."""
    tiny = {"model": {"channels": [4, 8, 16], "strides": [2, 2]},
            "optimizer": {"name": "novograd", "lr": 1e-2, "grad_averaging": True},
            "train": {"epochs": 2, "steps_per_epoch": 2, "patch_size": [32, 32, 16],
                      "threads": 1, "device": "cpu", "val_hd95": False}}
    donor = []
    train(Spec.model_validate(tiny), split, phantom_root, report=lambda m, s: donor.append(s))
    own = Spec.model_validate({**tiny, "optimizer": {**tiny["optimizer"], "lr": 1e-12}})
    after = []
    train(own, split, phantom_root, report=lambda m, s: after.append(s), resume=donor[0])
    assert [s["epoch"] for s in after] == [2]
    assert {g["initial_lr"] for g in after[0]["optimizer"]["param_groups"]} == {1e-12}
    assert after[0]["scheduler"]["last_epoch"] == donor[1]["scheduler"]["last_epoch"]
    for key, value in donor[0]["model"].items():
        torch.testing.assert_close(after[0]["model"][key], value, rtol=0, atol=1e-6)
