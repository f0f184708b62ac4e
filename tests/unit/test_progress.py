"""The terminal's trial and status lines, fed the events a search sends."""

from __future__ import annotations

import numpy as np
import pytest

from search.progress import SearchStatus, versus


def test_status_line_counts_each_end_and_names_the_best_so_far(monkeypatch):
    clock = iter([1000.0, 1125.0, 1125.0, 1140.0, 1200.0])
    monkeypatch.setattr("search.progress.time.time", lambda: next(clock))
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
    line = status.line(running=1, pending=1)
    assert line == ("status: 1 running, 1 completed, 1 stopped, 1 errored of 5 trials "
                    "(1 pending); 2m05s; best so far: trial a val_dice 0.4500 at epoch 2 "
                    "(optimizer.lr=0.0125, model.norm=instance)")
    assert not status.due()  # 15 s after the line
    assert status.due()  # 75 s after it (every 30 s)


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
