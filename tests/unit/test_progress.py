"""The terminal's trial and status lines, fed the events a search sends."""

from __future__ import annotations

import numpy as np
import pytest

from search.progress import SearchStatus, versus


def test_status_line_counts_each_end_and_names_the_best_so_far(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("search.progress.time.time", lambda: now[0])
    status = SearchStatus("val_dice", total=5, reduction_factor=2, every=30)
    status.started("a", {"optimizer.lr": 0.0125, "model.norm": "instance"})
    status.started("b", {"optimizer.lr": 0.5})
    status.result("a", 1, 0.20)
    status.result("a", 2, 0.45)
    status.result("a", 3, 0.40)  # the best epoch is 2, not the last
    status.result("b", 1, 0.10)
    status.end("a", "completed")
    status.end("b", "stopped")
    status.started("c", {"optimizer.lr": 0.1})
    status.end("c", "errored")
    now[0] = 1125.0
    line = status.line(running=1, pending=1)
    assert line == ("status: 1 running, 1 completed, 1 stopped, 1 errored, 1 pending of 5 "
                    "trials; 2m05s; best: trial a val_dice 0.4500 at epoch 2 "
                    "(new: optimizer.lr=0.0125, model.norm=instance)")
    now[0] = 1140.0
    assert not status.due()  # 15 s after the line
    now[0] = 1200.0
    assert status.due()  # 75 s after it (every 30 s)
    # The best trial's values once, not on every line while it stays the best.
    assert status.line(running=1, pending=1).endswith("best: trial a val_dice 0.4500 at "
                                                      "epoch 2")


def test_status_line_bounds_the_time_left_by_the_epochs_left_at_the_median_epoch_time():
    status = SearchStatus("val_dice", total=6, budget=4)
    assert status.time_left(["a"], 2) is None  # no epoch timed yet
    status.started("a", {})
    status.started("b", {})
    for trial, epoch, seconds in (("a", 1, 10.0), ("a", 2, 12.0), ("b", 1, 30.0)):
        status.result(trial, epoch, 0.5, seconds)
    # a has 2 epochs left, b 3, two pending trials 4 each: 13 epochs at 12 s on 2 workers.
    assert status.time_left(["a", "b"], 2) == pytest.approx(13 * 12.0 / 2)
    assert ", at most 1m18s left;" in status.line(["a", "b"], 2)


def test_the_stop_line_gives_the_value_asha_saw_and_its_cutoff():
    status = SearchStatus("val_dice", total=4, reduction_factor=3)
    for trial, value in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        status.result(trial, 2, value)
    # Ray's ASHA: the (1 - 1/rf) quantile of the values recorded at the rung so far.
    cutoff = np.nanpercentile([0.5, 0.3, 0.2], (1 - 1 / 3) * 100)
    assert status.stopped_line("c", 2, 8) == (
        f"trial c stopped by the scheduler at epoch 2/8: val_dice 0.2000, below the rung's "
        f"cutoff {cutoff:.4f}")
    plain = SearchStatus("val_dice", total=2)  # FIFO or a time limit: no cutoff to show
    plain.result("x", 3, 0.25)
    assert plain.stopped_line("x", 3, 8) == \
        "trial x stopped by the scheduler at epoch 3/8: val_dice 0.2500"


@pytest.mark.parametrize("a, b, text", [
    (0.412, 0.413, "0.4120 vs 0.4130"),
    (0.0104118, 0.0104120, "0.01041180 vs 0.01041200"),  # equal at 4 and 6 digits
    (0.25, 0.25, "0.2500 vs 0.2500"),
])
def test_scores_print_at_the_precision_that_tells_them_apart(a, b, text):
    assert versus(a, b) == text
