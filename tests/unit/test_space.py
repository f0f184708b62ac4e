from __future__ import annotations

import optuna
import pytest
from helpers import ROOT

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
    order = [k for k, _, _ in ordered_leaves(Spec.model_validate(SPACE))]
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
    assert "optimizer.lr: float 0.0001..0.1 log" in lines
    assert "optimizer.beta1: float 0.8..0.99 step 0.01" in lines
    assert any(line.startswith("optimizer.weight_decay") and "when" in line for line in lines)


def test_condition_cycle_is_an_error():
    spec = Spec.model_validate({"schedule": {
        "cycles": {"type": "categorical", "choices": [0.5, 1.0],
                   "when": {"train.grad_clip": 1.0}, "default": 0.5}},
        "train": {"grad_clip": {"type": "categorical", "choices": [1.0, 5.0],
                                "when": {"schedule.cycles": 0.5}, "default": 1.0}}})
    with pytest.raises(SpecError, match="form a cycle"):
        ordered_leaves(spec)


FAMILIES = {
    "optimizer": {
        "name": {"type": "categorical", "choices": ["novograd", "adamw", "schedulefree_adamw"]},
        "lr": [
            {"type": "float", "low": 1e-2, "high": 2e-1, "log": True,
             "when": {"optimizer.name": "novograd"}},
            {"type": "float", "low": 3e-4, "high": 1e-2, "log": True,
             "when": {"optimizer.name": ["adamw", "schedulefree_adamw"]}},
        ],
        "grad_averaging": {"type": "categorical", "choices": [True, False],
                           "when": {"optimizer.name": "novograd"}},
    },
    "schedule": {"cycles": {"type": "float", "low": 0.25, "high": 0.5,
                            "when": {"optimizer.name": ["novograd", "adamw"]}}},
}


def test_optimizer_family_as_a_categorical_with_its_own_ranges():
    spec = Spec.model_validate(FAMILIES)
    names = [name for _, name, _ in ordered_leaves(spec)]
    assert "optimizer.lr@novograd" in names and "optimizer.lr@adamw|schedulefree_adamw" in names
    configs = preview(spec, 30)
    assert {c["optimizer.name"] for c in configs} == {"novograd", "adamw", "schedulefree_adamw"}
    for config in configs:
        name, lr = config["optimizer.name"], config["optimizer.lr"]
        assert (1e-2 <= lr <= 2e-1) if name == "novograd" else (3e-4 <= lr <= 1e-2)
        assert ("optimizer.grad_averaging" in config) == (name == "novograd")
        assert ("schedule.cycles" in config) == (name != "schedulefree_adamw")
        trial = spec.resolve(config)  # each trial's spec is valid for its optimizer
        assert trial.optimizer.name == name and trial.searched() == {}
        if name != "novograd":
            assert trial.optimizer.grad_averaging is None  # unset: the optimizer's default


@pytest.mark.parametrize("change, message", [
    ({"optimizer": {**FAMILIES["optimizer"], "grad_averaging": True}},
     r"optimizer.grad_averaging is not a parameter of optimizer.name 'adamw'.*make it "
     r"conditional"),
    ({"schedule": {"cycles": 0.5}},
     r"schedule.cycles does not fit optimizer.name 'schedulefree_adamw'.*conditional"),
    ({"lr_finder": {"enabled": True}}, r"lr_finder needs a fixed optimizer.name"),
    ({"optimizer": {**FAMILIES["optimizer"],
                    "name": {"type": "categorical", "choices": ["novograd", "adam"]}}},
     r"unknown optimizer 'adam'; did you mean 'adamw'\?"),
])
def test_family_rules_are_checked_for_every_choice(change, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Spec.model_validate({**FAMILIES, **change})


def test_condition_needs_a_default_where_the_setting_cannot_be_unset():
    from pydantic import ValidationError

    bad = {**FAMILIES, "schedule": {"warmup_fraction": {
        "type": "float", "low": 0.0, "high": 0.2, "when": {"optimizer.name": "adamw"}}}}
    with pytest.raises(ValidationError, match=r"schedule.warmup_fraction: a conditional leaf "
                                              r"\(with `when`\) needs a `default`"):
        Spec.model_validate(bad)


def test_asha_stops_the_weak_trial_not_the_strong_one():
    # The metric is a Dice: higher is better. A flipped direction would stop the best trial.
    from types import SimpleNamespace

    from search.spec import load_spec
    from search.tuner import make_scheduler

    spec = load_spec(ROOT / "spaces" / "smoke.yaml", ["search.reduction_factor=2",
                                                     "search.grace_period=1"])
    asha = make_scheduler(spec)
    strong, weak = SimpleNamespace(trial_id="strong"), SimpleNamespace(trial_id="weak")
    for trial in (strong, weak):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, strong, {"training_iteration": 1, "val_dice": 0.8}) \
        == "CONTINUE"
    assert asha.on_trial_result(None, weak, {"training_iteration": 1, "val_dice": 0.1}) == "STOP"


def test_the_study_maximises_the_metric(tmp_path):
    import optuna

    from search.spec import load_spec
    from search.tuner import make_searcher

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_searcher(load_spec(ROOT / "spaces" / "smoke.yaml"), url, "s")
    assert optuna.load_study(study_name="s", storage=url).direction == \
        optuna.study.StudyDirection.MAXIMIZE
