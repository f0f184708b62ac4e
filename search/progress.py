"""What the terminal says while a search runs: a line per trial start and stop, and a status
line on each change and every ~30 s (trials running / completed / stopped / errored of the
total, elapsed time, the best so far). Ray's own reporter, which segtune turns off for its
tables and TensorBoard hint, showed the counts; this says them in the search's terms.

Plain Python fed by `search.callbacks.MlflowCallback`, so it is tested without Ray.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np


def values_text(values: dict[str, Any], digits: int = 3) -> str:
    """`optimizer.lr=0.0125, layers.early_encoder=0.386`: settings as one line, floats to
    `digits` significant digits (the terminal's lines, MLflow's tags, `--dry-run`)."""
    return ", ".join(f"{k}={v:.{digits}g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def versus(value: float, other: float) -> str:
    """Two scores at the precision that tells them apart: `0.4120 vs 0.4130`, and
    `0.0104118 vs 0.0104120` where four decimals would print a tie that is not one."""
    for digits in (4, 6, 8, 12):
        if f"{value:.{digits}f}" != f"{other:.{digits}f}" or value == other:
            return f"{value:.{digits}f} vs {other:.{digits}f}"
    return f"{value!r} vs {other!r}"


def _duration(seconds: float) -> str:
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
                 every: float = 30.0):
        self.metric = metric
        self.total = total
        self.rf = reduction_factor
        self.every = every
        self.started_at = time.time()
        self.last_line = -math.inf
        self.values: dict[str, dict[str, Any]] = {}
        self.ended: dict[str, str] = {}  # trial id -> completed / stopped / errored
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best value, its epoch)
        self.at_epoch: dict[int, dict[str, float]] = {}  # epoch -> trial id -> value
        self.cutoff_seen: dict[str, float] = {}  # trial id -> the cutoff at its last result

    def restart_clock(self) -> None:
        """A resumed search counts its elapsed time from the resume."""
        self.started_at = time.time()

    def started(self, trial_id: str, values: dict[str, Any]) -> None:
        self.values[trial_id] = values
        self.ended.pop(trial_id, None)  # a trial resumed after an error runs again

    def result(self, trial_id: str, epoch: int, value: float | None) -> None:
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

    def line(self, running: int, pending: int) -> str:
        """`status: 2 running, 1 completed, 1 stopped, 0 errored of 8 trials (4 pending);
        3m05s; best so far: trial ab12 val_dice 0.4120 at epoch 6 (optimizer.lr=0.01)`"""
        self.last_line = time.time()
        how = list(self.ended.values())
        text = (f"status: {running} running, {how.count('completed')} completed, "
                f"{how.count('stopped')} stopped, {how.count('errored')} errored of "
                f"{self.total} trials ({pending} pending); "
                f"{_duration(time.time() - self.started_at)}")
        if self.best:
            trial_id, (value, epoch) = max(self.best.items(), key=lambda kv: kv[1][0])
            text += (f"; best so far: trial {trial_id} {self.metric} {value:.4f} at epoch "
                     f"{epoch}")
            if self.values.get(trial_id):
                text += f" ({values_text(self.values[trial_id])})"
        return text
