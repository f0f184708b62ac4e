"""The end-of-run table (`search.report.format_summary`) of a known summary, as printed."""

from __future__ import annotations

from search.report import format_summary
from search.summary import Summary

SUMMARY = {
    "trials": [
        {"trial_id": "a1", "status": "completed", "epochs": 4, "val_dice": 0.61234,
         "val_dice_per_class": {"esophagus": 0.4, "heart": 0.9},
         "config": {"optimizer.lr": 0.012345, "optimizer.name": "adamw"}},
        {"trial_id": "b2", "status": "error", "epochs": 1, "val_dice": None,
         "config": {"optimizer.lr": 0.1}, "error": "ValueError: boom"}],
    "best": {"trial_id": "a1", "val_dice": 0.61234, "test_dice": 0.5,
             "test_dice_per_class": {"esophagus": 0.3, "heart": 0.7}},
    "soups": {"greedy": {"ingredients": ["a1"], "val_dice": 0.62, "test_dice": 0.51,
                         "test_dice_per_class": {"esophagus": 0.31}}},
}

EXPECTED = """\
Trials (validation Dice of each trial's best epoch):
trial  status     epochs  val_dice  esoph  heart  lr      name
-----  ---------  ------  --------  -----  -----  ------  -----
a1     completed  4       0.612     0.400  0.900  0.0123  adamw
b2     error      1       -         -      -      0.1     -

Errors:
  b2: ValueError: boom

Held-out test split (not used for any selection):
model          size  val_dice  test_dice  esoph  heart
-------------  ----  --------  ---------  -----  -----
best trial a1  1     0.612     0.500      0.300  0.700
greedy soup    1     0.620     0.510      0.310  -"""


def test_the_table_of_trials_errors_and_held_out_scores():
    searched = ["optimizer.lr", "optimizer.name"]
    assert format_summary(Summary.from_json(SUMMARY), searched) == EXPECTED


def test_a_search_that_ended_before_the_test_split_shows_its_trials_only():
    text = format_summary(Summary.from_json({**SUMMARY, "best": None, "soups": None}), [])
    assert text.splitlines()[1].split() == ["trial", "status", "epochs", "val_dice", "esoph",
                                            "heart"]
    assert "Held-out" not in text and "Errors:" in text
