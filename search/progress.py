"""What the terminal says while a search runs: a line per trial start and stop, and a status
line on each change and every ~30 s (trials running / completed / stopped / errored / pending
of the total, elapsed time, an upper bound on the time left, the best so far: its searched
values only when the best trial changes). Ray's own reporter, which segtune turns off for its
tables and TensorBoard hint, showed the counts; this says them in the search's terms.

Plain Python fed by `search.callbacks.MlflowCallback`, so it is tested without Ray.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from search.trials import values_text


def versus(value: float, other: float) -> str:
    """Two scores at the precision that tells them apart: `0.4120 vs 0.4130`, and
    `0.0104118 vs 0.0104120` where four decimals would print a tie that is not one."""
    for digits in (4, 6, 8, 12):
        if f"{value:.{digits}f}" != f"{other:.{digits}f}" or value == other:
            return f"{value:.{digits}f} vs {other:.{digits}f}"
    return f"{value!r} vs {other!r}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}h{rest // 60:02d}m" if hours else
            f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s")


class SearchStatus:
    """Counts, best so far and ASHA's cutoffs of one search, from the trial events.

    `metric` is maximised. `reduction_factor` is ASHA's: the cutoff at a rung is the
    (1 - 1/rf) quantile of the values reported at that epoch so far, as Ray's ASHA computes
    it when it decides (None without ASHA)."""

    def __init__(self, metric: str, total: int, reduction_factor: float | None = None,
                 every: float = 30.0, budget: int = 0):
        self.metric = metric
        self.total = total
        self.rf = reduction_factor
        self.every = every
        self.budget = budget  # epochs of a trial that runs to its end (0: no time left shown)
        self.started_at = time.time()
        self.last_line = -math.inf
        self.shown_best: str | None = None  # the best trial whose values the last line gave
        self.values: dict[str, dict[str, Any]] = {}
        self.trial_start: dict[str, float] = {}
        self.last_epoch: dict[str, int] = {}
        self.epoch_s: list[float] = []  # seconds per epoch of every result so far
        self.ended: dict[str, str] = {}  # trial id -> completed / stopped / errored
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best value, its epoch)
        self.at_epoch: dict[int, dict[str, float]] = {}  # epoch -> trial id -> value
        self.cutoff_seen: dict[str, float] = {}  # trial id -> the cutoff at its last result

    def restart_clock(self) -> None:
        """A resumed search counts its elapsed time from the resume."""
        self.started_at = time.time()

    def started(self, trial_id: str, values: dict[str, Any]) -> None:
        self.values[trial_id] = values
        self.trial_start[trial_id] = time.time()
        self.ended.pop(trial_id, None)  # a trial resumed after an error runs again

    def trial_seconds(self, trial_id: str) -> float:
        """Seconds since the trial started (in this session)."""
        return time.time() - self.trial_start.get(trial_id, time.time())

    def result(self, trial_id: str, epoch: int, value: float | None,
               seconds: float | None = None) -> None:
        """A trial's result at `epoch`; `seconds` is how long that epoch took."""
        self.last_epoch[trial_id] = epoch
        if seconds is not None and math.isfinite(seconds) and seconds > 0:
            self.epoch_s.append(float(seconds))
        if value is None or not math.isfinite(value):
            return
        if trial_id not in self.best or value > self.best[trial_id][0]:
            self.best[trial_id] = (value, epoch)
        seen = self.at_epoch.setdefault(epoch, {})
        seen[trial_id] = value
        if self.rf:
            self.cutoff_seen[trial_id] = float(np.nanpercentile(
                list(seen.values()), (1 - 1 / self.rf) * 100))

    def end(self, trial_id: str, how: str) -> None:
        self.ended[trial_id] = how

    def stopped_line(self, trial_id: str, epoch: int, epochs: int) -> str:
        """`trial X stopped by ASHA at epoch 2/8: val_dice 0.31 below the rung's cutoff 0.35`"""
        value = self.at_epoch.get(epoch, {}).get(trial_id)
        cutoff = self.cutoff_seen.get(trial_id)
        if value is None:
            return f"trial {trial_id} stopped by the scheduler at epoch {epoch}/{epochs}"
        text = f"trial {trial_id} stopped by the scheduler at epoch {epoch}/{epochs}: "
        if cutoff is None:
            return text + f"{self.metric} {value:.4f}"
        mine, rung = versus(value, cutoff).split(" vs ")
        return text + f"{self.metric} {mine}, " + (
            f"below the rung's cutoff {rung}" if value < cutoff else f"the rung's cutoff {rung}")

    def due(self) -> bool:
        """Whether the periodic status line is due (every `every` seconds)."""
        return time.time() - self.last_line >= self.every

    def time_left(self, running: list[str], pending: int) -> float | None:
        """An upper bound on the seconds left: the epochs the running trials have left plus
        a whole budget per pending trial, at the median epoch time so far, spread over the
        trials running at once (trials the scheduler stops early make it shorter). None
        before the first epoch."""
        if not self.budget or not self.epoch_s:
            return None
        epochs = sum(max(self.budget - self.last_epoch.get(t, 0), 0) for t in running)
        epochs += pending * self.budget
        return epochs * float(np.median(self.epoch_s)) / max(len(running), 1)

    def line(self, running: int | list[str], pending: int) -> str:
        """`status: 2 running, 1 completed, 1 stopped, 0 errored, 4 pending of 8 trials;
        3m05s, at most 6m10s left; best: trial ab12 val_dice 0.4120 at epoch 6`, and the
        best trial's searched values when it is new since the last line. `running`: the
        count, or the ids of the running trials (for the time left)."""
        self.last_line = time.time()
        ids = running if isinstance(running, list) else []
        count = len(running) if isinstance(running, list) else running
        how = list(self.ended.values())
        text = (f"status: {count} running, {how.count('completed')} completed, "
                f"{how.count('stopped')} stopped, {how.count('errored')} errored, "
                f"{pending} pending of {self.total} trials; "
                f"{duration(time.time() - self.started_at)}")
        left = self.time_left(ids, pending) if ids or pending else None
        if left is not None:
            text += f", at most {duration(left)} left"
        if self.best:
            trial_id, (value, epoch) = max(self.best.items(), key=lambda kv: kv[1][0])
            text += f"; best: trial {trial_id} {self.metric} {value:.4f} at epoch {epoch}"
            if self.values.get(trial_id) and trial_id != self.shown_best:
                text += f" (new: {values_text(self.values[trial_id])})"
            self.shown_best = trial_id
        return text
