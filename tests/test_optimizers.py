from __future__ import annotations

import pytest
import torch

from search.spec import Spec, SpecError, load_spec
from train_fn.datasets import find_cases, split_cases
from train_fn.loop import train
from train_fn.models import build_model
from train_fn.optim import OPTIMIZERS, build_optimizer, optimizer_settings, param_groups


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name):
    schedule = {"warmup_fraction": 0.0} if name == "schedulefree_radam" else {}
    spec = Spec.model_validate({"optimizer": {"name": name, "lr": 0.01},
                                "schedule": schedule,
                                "model": {"channels": [4, 8], "strides": [2]}})
    model = build_model(spec.model, 1, 5)
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(param_groups(model, spec.model, spec.layers, 0.01), spec.optimizer)
    if OPTIMIZERS[name].schedule_free:
        opt.train()
    for _ in range(6):  # schedule-free RAdam is silent for its first steps (rectification)
        opt.zero_grad()
        model(torch.rand(2, 1, 16, 16, 16)).mean().backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_unset_keys_take_the_optimizer_defaults():
    spec = Spec.model_validate({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True}})
    assert optimizer_settings(spec.optimizer) == {"lr": 0.1, "momentum": 0.9, "nesterov": True,
                                                  "weight_decay": 0.0}


@pytest.mark.parametrize("text, message", [
    ("optimizer:\n  name: adamw\n  grad_averaging: true\n",
     r"spec.yaml:1: optimizer: optimizer.grad_averaging is not a parameter of optimizer.name "
     r"'adamw'; adamw takes: lr, beta1, beta2, eps, weight_decay"),
    ("optimizer:\n  name: sgd\n  beta1: 0.9\n",
     r"optimizer.beta1 is not a parameter of optimizer.name 'sgd'; sgd takes: lr, momentum, "
     r"nesterov, weight_decay"),
    ("optimizer:\n  name: schedulefree_adamw\nschedule:\n  cycles: 0.5\n",
     r"schedule.cycles does not fit optimizer.name 'schedulefree_adamw': a schedule-free "
     r"optimizer keeps its LR constant after its own warmup \(remove schedule.cycles\)"),
    ("optimizer:\n  name: schedulefree_radam\n",
     r"schedule.warmup_fraction does not fit optimizer.name 'schedulefree_radam'"),
])
def test_parameters_an_optimizer_does_not_take_are_refused(write_spec, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(text))


SF = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "schedulefree_adamw", "lr": 0.01, "beta1": 0.9},
    "schedule": {"warmup_fraction": 0.25},
    "train": {"epochs": 2, "steps_per_epoch": 3, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu"},
}


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def test_schedule_free_checkpoint_holds_the_validated_eval_weights(phantom_root, split):
    from train_fn.data import load_volumes
    from train_fn.datasets import SEGTHOR_LABELS
    from train_fn.metrics import evaluate

    spec = Spec.model_validate(SF)
    states = []
    train(spec, split, phantom_root, report=lambda m, s: states.append((m, s)))
    metrics, state = states[-1]
    assert all(g["train_mode"] is False for g in state["optimizer"]["param_groups"])
    # The saved weights are the ones validated: evaluating them gives the reported Dice.
    model = build_model(spec.model, 1, 5)
    model.load_state_dict(state["model"])
    cases = {c.case_id: c for c in find_cases(phantom_root)}
    vols = load_volumes([cases[i] for i in split["val"]], spec.data)
    regions = {name: (i,) for i, name in SEGTHOR_LABELS.items()}
    assert evaluate(model, vols, spec.train, torch.device("cpu"), regions)[0] == \
        metrics["val_dice"]
    # Warmup comes from the warmup fraction: 0.25 x 6 steps -> the optimizer's own 2 steps.
    assert state["optimizer"]["param_groups"][0]["warmup_steps"] == 2


def test_schedule_free_resume_matches_an_uninterrupted_run(phantom_root, split):
    spec = Spec.model_validate(SF)
    full = []
    train(spec, split, phantom_root, report=lambda m, s: full.append(s))
    resumed = []
    train(spec, split, phantom_root, report=lambda m, s: resumed.append(s), resume=full[0])
    assert [s["epoch"] for s in resumed] == [2]
    a, b = full[-1]["model"], resumed[-1]["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
