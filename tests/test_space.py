from __future__ import annotations

import optuna
import pytest

from search.space import define_by_run, describe, ordered_leaves, preview
from search.spec import Spec, SpecError

SPACE = {
    "optimizer": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "beta1": {"type": "float", "low": 0.8, "high": 0.99, "step": 0.01},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True,
                         "when": {"schedule.cycles": 0.5}, "default": 0.0},
    },
    "schedule": {"cycles": {"type": "categorical", "choices": [0.5, 0.25]}},
    "train": {"grad_clip": {"type": "categorical", "choices": [1.0, 5.0]}},
    "layers": {"early_encoder": {"type": "float", "low": 0.1, "high": 0.5}},
    "search": {"seed": 3},
}


def test_distributions_come_from_the_spec():
    study = optuna.create_study()
    trial = study.ask()
    config = define_by_run(Spec.model_validate(SPACE))(trial)
    dists = trial.distributions
    assert dists["optimizer.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["optimizer.beta1"].step == 0.01
    assert dists["schedule.cycles"].choices == (0.5, 0.25)
    assert set(config) <= set(dists)


def test_conditional_parameter_follows_its_switch():
    spec = Spec.model_validate(SPACE)
    configs = preview(spec, 12)
    for config in configs:
        assert ("optimizer.weight_decay" in config) == (config["schedule.cycles"] == 0.5)
        resolved = spec.resolve(config)
        if config["schedule.cycles"] != 0.5:
            assert resolved.optimizer.weight_decay == 0.0  # the leaf's default
    assert {c["schedule.cycles"] for c in configs} == {0.5, 0.25}


def test_condition_is_sampled_before_the_leaf_that_uses_it():
    order = [k for k, _ in ordered_leaves(Spec.model_validate(SPACE))]
    assert order.index("schedule.cycles") < order.index("optimizer.weight_decay")


def test_same_seed_same_proposals_other_seed_differs():
    spec = Spec.model_validate(SPACE)
    score = lambda c: -abs(c["optimizer.lr"] - 0.01)  # noqa: E731 - TPE uses the scores
    first, again = preview(spec, 8, score), preview(spec, 8, score)
    assert first == again
    other = Spec.model_validate({**SPACE, "search": {"seed": 4}})
    assert preview(other, 8, score) != first


def test_random_sampler_and_describe():
    spec = Spec.model_validate({**SPACE, "search": {"sampler": "random", "seed": 1}})
    assert preview(spec, 3) == preview(spec, 3)
    lines = describe(spec)
    assert "optimizer.lr: float [0.0001, 0.1] log" in lines
    assert "optimizer.beta1: float [0.8, 0.99] step 0.01" in lines
    assert any(line.startswith("optimizer.weight_decay") and "when" in line for line in lines)


def test_condition_cycle_is_an_error():
    spec = Spec.model_validate({"schedule": {
        "cycles": {"type": "categorical", "choices": [0.5, 1.0],
                   "when": {"train.grad_clip": 1.0}, "default": 0.5}},
        "train": {"grad_clip": {"type": "categorical", "choices": [1.0, 5.0],
                                "when": {"schedule.cycles": 0.5}, "default": 1.0}}})
    with pytest.raises(SpecError, match="form a cycle"):
        ordered_leaves(spec)
