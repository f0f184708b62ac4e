"""`search.results` without MLflow runs: a summary.json record's scores as metrics, the result
runs a summary gives (best trial, soups) with their tags and notes, the model's pinned
requirements, and a model that cannot be logged being a warning. (The runs themselves in a
real store: tests/unit/test_tracking.py.)"""

from __future__ import annotations

import logging
from importlib.metadata import version

import pytest
import torch

from search.results import KIND_TAG, SOUP_TAG, log_model, requirements, results_of, scores
from search.summary import ScoredRecord, Summary

RECORD = {"val_dice": 0.6, "test_dice": 0.5, "val_dice_per_class": {"heart": 0.8},
          "test_dice_per_class": {"heart": 0.7, "aorta": 0.3},
          "test_hd95_per_class": {"heart": 4.0}}


@pytest.mark.parametrize("record, expected", [
    (RECORD, {"val_dice": 0.6, "test_dice": 0.5, "val_dice/heart": 0.8,
              "test_dice/heart": 0.7, "test_dice/aorta": 0.3, "test_hd95/heart": 4.0}),
    ({"val_dice": 0.6, "test_dice": None, "test_dice_per_class": None}, {"val_dice": 0.6}),
    ({}, {}),
])
def test_a_records_scores_as_metrics(record, expected):
    assert scores(ScoredRecord.from_json(record)) == expected


def test_a_summary_gives_the_best_trial_and_each_soup():
    summary = {"best": {"trial_id": "t1", "config": {"optimizer.lr": 0.02}, **RECORD},
               "soups": {"uniform": {"ingredients": ["t1", "t2", "t3"], **RECORD},
                         "greedy": {"ingredients": ["t1"], **RECORD, "val_dice": 0.7}}}
    weights = {"best": {"w": 1}, "greedy": {"w": 2}}
    best, uniform, greedy = results_of(Summary.from_json(summary), weights)
    assert (best.name, best.weights, best.params) == ("best", {"w": 1}, {"optimizer.lr": 0.02})
    assert best.tags == {KIND_TAG: "best", "segtune.trial": "t1"}
    assert best.note == "best trial t1"
    assert best.metrics == scores(ScoredRecord.from_json(RECORD))
    assert (uniform.name, uniform.weights, uniform.metrics["size"]) == ("uniform", None, 3.0)
    assert uniform.tags == {KIND_TAG: "soup", SOUP_TAG: "uniform",
                            "segtune.ingredients": "t1, t2, t3"}
    assert uniform.note == "uniform soup of 3 trial(s): t1, t2, t3"
    assert greedy.metrics["val_dice"] == 0.7 and greedy.weights == {"w": 2}
    no_soups = Summary.from_json({**summary, "soups": None})
    assert [r.name for r in results_of(no_soups, {})] == ["best"]


def test_the_models_requirements_pin_the_installed_versions_without_a_local_tag():
    pins = dict(line.split("==") for line in requirements())
    assert list(pins) == ["torch", "monai", "cloudpickle"]
    assert pins["torch"] == version("torch").split("+")[0] and "+" not in pins["torch"]


def test_a_model_that_cannot_be_logged_is_a_warning(store, caplog):
    net = torch.nn.Conv3d(1, 2, 3)
    with caplog.at_level(logging.WARNING, logger="search.results"):
        log_model(store, "0123abcd", net, net.state_dict(), None, None)  # no such run
    assert "MLflow: the model of run 0123abcd was not logged (Run with id=0123abcd not " \
           "found)" in caplog.text
