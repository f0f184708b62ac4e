"""`search.sampler: grid`: every point once, and the spec errors of a grid."""

from __future__ import annotations

import pickle

import pytest

from search.space import make_sampler, preview
from search.spec import FloatLeaf, IntLeaf, Spec, SpecError, load_spec

GRID = {
    "optimizer": {
        "name": "adamw",
        "lr": {"type": "categorical", "choices": [1e-3, 3e-3, 1e-2]},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
    },
    "train": {"grad_clip": {"type": "categorical", "choices": [1.0, 5.0]}},
    "schedule": {"warmup_fraction": 0.1},
    "search": {"sampler": "grid", "num_trials": 18, "seed": 5},
}


def test_grid_points_of_each_leaf_kind():
    spec = Spec.model_validate(GRID)
    assert spec.grid() == {
        "optimizer.lr": [1e-3, 3e-3, 1e-2],
        "optimizer.weight_decay": [0.0, 0.1, 0.2],
        "train.grad_clip": [1.0, 5.0],
    }
    assert IntLeaf(type="int", low=1, high=7, step=3).grid_points() == [1, 4, 7]
    assert FloatLeaf(type="float", low=0.1, high=0.7, step=0.3).grid_points() == [0.1, 0.4, 0.7]


def test_grid_visits_every_point_once_in_a_seeded_order():
    spec = Spec.model_validate(GRID)
    configs = preview(spec, 18)
    points = {tuple(sorted(c.items())) for c in configs}
    assert len(points) == 18  # 3 x 3 x 2, none repeated
    assert {c["optimizer.weight_decay"] for c in configs} == {0.0, 0.1, 0.2}
    assert preview(spec, 18) == configs
    other = Spec.model_validate({**GRID, "search": {**GRID["search"], "seed": 6}})
    assert preview(other, 18) != configs


def test_a_trial_resolves_its_grid_point():
    spec = Spec.model_validate(GRID)
    config = preview(spec, 1)[0]
    resolved = spec.resolve(config)
    assert resolved.optimizer.lr == config["optimizer.lr"]
    assert resolved.search.sampler == "grid" and not resolved.search_leaves()


def test_fewer_trials_than_points_take_distinct_points():
    spec = Spec.model_validate({**GRID, "search": {**GRID["search"], "num_trials": 5}})
    configs = preview(spec, 5)
    assert len({tuple(sorted(c.items())) for c in configs}) == 5


def test_grid_sampler_pickles():
    # Ray saves the searcher, sampler included, with its experiment state.
    sampler = pickle.loads(pickle.dumps(make_sampler(Spec.model_validate(GRID))))
    assert sampler._n_min_trials == 18


@pytest.mark.parametrize("text, message", [
    ("optimizer:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
     "search:\n  sampler: grid\n  num_trials: 2\n",
     r"spec.yaml:2: optimizer.lr: search.sampler grid needs a categorical leaf, an int leaf "
     r"or a float leaf with `step`; got a float range \[0.001, 0.1\] without step"),
    ("optimizer:\n  lr: {type: categorical, choices: [0.01, 0.1]}\n"
     "search:\n  sampler: grid\n  num_trials: 3\n",
     r"spec.yaml:\d: search.num_trials \(3\) is larger than the grid \(2 points\): set "
     r"search.num_trials to 2 or less"),
    ("optimizer:\n  name: {type: categorical, choices: [adamw, sgd]}\n"
     "  lr: {type: categorical, choices: [0.01]}\n"
     "  weight_decay: {type: categorical, choices: [0.0, 0.1], when: {optimizer.name: adamw},"
     " default: 0.0}\n"
     "search:\n  sampler: grid\n  num_trials: 2\n",
     r"optimizer.weight_decay: search.sampler grid does not take conditional leaves"),
    ("search:\n  sampler: grd\n",
     r"spec.yaml:2: search.sampler: Input should be 'tpe', 'random' or 'grid', got 'grd'"),
])
def test_grid_spec_errors(write_spec, text, message):
    with pytest.raises(SpecError, match=message) as err:
        load_spec(write_spec(text))
    assert "\n" not in str(err.value)
