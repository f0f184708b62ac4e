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

Held-out test split (means over its cases, not used for any selection; their spread: \
python -m search evaluate RUN_DIR):
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


def test_held_out_scores_carry_their_spread_over_the_test_cases():
    """With the per-case reference (made with the soups), each test figure is mean±std over
    the test cases, and the header says how many."""
    def describe(mean, std):
        return {"mean": mean, "std": std, "ci95": [mean - std, mean + std], "n": 3}

    reference = {"cases": ["P1", "P2", "P3"], "models": {
        "best": {"ingredients": ["a1"], "mean": describe(0.5, 0.1),
                 "regions": {"esophagus": describe(0.3, 0.2), "heart": describe(0.7, 0.05)}},
        "greedy": {"ingredients": ["a1"], "mean": describe(0.51, 0.12),
                   "regions": {"esophagus": describe(0.31, 0.21),
                               "heart": describe(0.7, 0.05)},
                   "vs_best": {"delta": 0.01, "ci95": [-0.01, 0.03], "better": False}}}}
    text = format_summary(Summary.from_json({**SUMMARY, "reference": reference}), [])
    held = text.split("Held-out test split ")[1].split("\n\n")[0].splitlines()
    assert held[0] == "(mean±std over its 3 cases; not used for any selection):"
    assert held[3].split() == ["best", "trial", "a1", "1", "0.612", "0.500±0.100",
                               "0.300±0.200", "0.700±0.050"]
    assert held[4].split() == ["greedy", "soup", "1", "0.620", "0.510±0.120", "0.310±0.210",
                               "-"]
