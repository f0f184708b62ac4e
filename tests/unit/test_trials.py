"""`search.trials`: a trial's length, a job's concrete spec and seed, a trial's searched
settings among Ray's config keys."""

from __future__ import annotations

import pytest

from search.spec import Spec
from search.trials import budget, job_spec, searched_config

BASE = Spec.model_validate({
    "optimizer": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
    "layers": {"head": {"type": "categorical", "choices": [1.0, 2.0]}},
    "train": {"epochs": 6, "seed": 3}, "model": {"init_seed": 4}})


@pytest.mark.parametrize("cv, expected", [
    ({}, 6),
    ({"folds": 3}, 6),  # cv.mode best: a trial trains epochs, folds come after the search
    ({"folds": 3, "mode": "every"}, 3),  # each report is a fold
])
def test_a_trials_budget_is_its_number_of_reports(cv, expected):
    assert budget(BASE.model_copy(update={"cv": BASE.cv.model_validate(cv)})) == expected


def test_a_job_trains_its_trials_config_with_its_own_seed():
    job = {"config": {"optimizer.lr": 0.02, "layers.head": 2.0}, "seed": 11}
    spec = job_spec(BASE, job)
    assert (spec.optimizer.lr, spec.layers.head) == (0.02, 2.0)
    assert (spec.train.seed, spec.model.init_seed) == (11, 11)
    same = job_spec(BASE, {**job, "seed": None})  # no seed: the search's own
    assert (same.train.seed, same.model.init_seed) == (3, 4)


def test_searched_config_keeps_the_specs_dotted_names_only():
    config = {"optimizer.lr": 0.02, "optimizer.lr@adamw": 0.03, "layers.head": 1.0,
              "job": "seed1"}
    assert searched_config(config, BASE) == {"optimizer.lr": 0.02, "layers.head": 1.0}
