"""Replaying a table of learning curves (issue 27, part 2): the table, the trial that reads it
instead of training, and a simulated clock with N workers.

A strategy proposes configurations; each is answered by the NEAREST TABULATED configuration
(unit cube, log axes in log space): no surrogate, so every number a strategy sees was measured.
`Simulator` runs the strategy's trials on N simulated workers, one table epoch at a time, each
epoch lasting the table's median seconds for that epoch (every configuration has the same
model, data and steps, so its cost does not depend on the hyperparameters; the measured
seconds vary with the shared machine's load, not with the configuration). Events are handled
in simulated-time order, as a real N-worker run would see them: a strategy that waits for a
rung to fill (synchronous halving) leaves its workers idle, on the clock.
"""

from __future__ import annotations

import heapq
import json
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

CONTINUE, STOP, PAUSE = "continue", "stop", "pause"


@dataclass(frozen=True)
class Table:
    """Configurations (dotted keys) and their per-epoch validation and test Dice."""

    space: dict[str, dict[str, Any]]
    configs: list[dict[str, float]]
    val: np.ndarray  # [configs, epochs]
    test: np.ndarray  # [configs, epochs]
    epoch_seconds: list[float]  # the median seconds of epoch k over the table

    @classmethod
    def load(cls, path: str | Path, space: dict[str, dict[str, Any]], limit: int | None = None
             ) -> Table:
        """The table at `path` (its first `limit` lines: the configurations trained first)."""
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()
                if line.strip()][:limit]
        rows.sort(key=lambda r: r["index"])
        epochs = max(len(r["epochs"]) for r in rows)
        rows = [r for r in rows if len(r["epochs"]) == epochs]  # a diverged trial: none so far
        val = np.array([[e["val_dice"] for e in r["epochs"]] for r in rows])
        test = np.array([[e["test_dice"] for e in r["epochs"]] for r in rows])
        seconds = [statistics.median(r["epochs"][k]["seconds"] for r in rows)
                   for k in range(epochs)]
        return cls(space, [r["config"] for r in rows], val, test, seconds)

    @property
    def epochs(self) -> int:
        return self.val.shape[1]

    @property
    def best_val(self) -> float:
        return float(self.val.max())

    def unit(self, config: dict[str, float]) -> np.ndarray:
        """`config` in the unit cube of the space (log axes in log space)."""
        out = []
        for key, dim in self.space.items():
            lo, hi, x = dim["low"], dim["high"], float(config[key])
            if dim["log"]:
                lo, hi, x = math.log(lo), math.log(hi), math.log(x)
            out.append((x - lo) / (hi - lo))
        return np.array(out)

    def nearest(self, config: dict[str, float], exclude: int | None = None) -> int:
        """The index of the tabulated configuration nearest to `config`."""
        grid = self._units()
        d = ((grid - self.unit(config)) ** 2).sum(axis=1)
        if exclude is not None:
            d[exclude] = np.inf
        return int(d.argmin())

    def _units(self) -> np.ndarray:
        cached = self.__dict__.get("_unit_cache")
        if cached is None:
            cached = np.stack([self.unit(c) for c in self.configs])
            object.__setattr__(self, "_unit_cache", cached)
        return cached

    def nearest_error(self) -> dict[str, float]:
        """Leave-one-out error of answering by the nearest OTHER configuration: how far the
        answer to a configuration not in the table is, on the table's own points."""
        final, best = [], []
        for i, config in enumerate(self.configs):
            j = self.nearest(config, exclude=i)
            final.append(abs(self.val[i, -1] - self.val[j, -1]))
            best.append(abs(self.val[i].max() - self.val[j].max()))
        return {"mae_final_val": float(np.mean(final)),
                "median_ae_final_val": float(np.median(final)),
                "mae_best_val": float(np.mean(best)),
                "spread_final_val": float(np.std(self.val[:, -1]))}


@dataclass
class ReplayTrial:
    """A trial that reads the table instead of training: `step()` gives the next epoch's
    result of tabulated configuration `index`; `stop_at` ends it early (a budget asked for)."""

    key: Any
    index: int
    table: Table
    epoch: int = 0
    stop_at: int | None = None

    @property
    def last_epoch(self) -> int:
        return self.table.epochs if self.stop_at is None else min(self.stop_at,
                                                                  self.table.epochs)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.last_epoch

    def step(self) -> dict[str, Any]:
        if self.finished:
            raise RuntimeError(f"trial {self.key} already ran its {self.last_epoch} epochs")
        self.epoch += 1
        k = self.epoch - 1
        return {"epoch": self.epoch, "training_iteration": self.epoch,
                "val_dice": float(self.table.val[self.index, k]),
                "test_dice": float(self.table.test[self.index, k]),
                "best_so_far": float(self.table.val[self.index, :self.epoch].max())}


class Strategy(Protocol):
    """What the simulator drives. `start()` gives a trial to run next (new, or a paused one to
    resume), None when nothing can start until a running trial reports, or DONE;
    `result()` returns CONTINUE, STOP or PAUSE; `finished()` is told when a trial ran its
    last epoch (or `stop_at`)."""

    def start(self) -> ReplayTrial | None | str: ...

    def result(self, trial: ReplayTrial, row: dict[str, Any]) -> str: ...

    def finished(self, trial: ReplayTrial, row: dict[str, Any]) -> None: ...


DONE = "done"


@dataclass
class Event:
    epochs: int  # epochs trained so far, all trials
    time: float  # simulated seconds since the start
    index: int  # tabulated configuration
    epoch: int
    val: float
    test: float


@dataclass
class Trace:
    events: list[Event] = field(default_factory=list)

    def anytime(self) -> Iterator[tuple[int, float, float, Event]]:
        """(epochs spent, simulated seconds, best validation Dice so far, its event)."""
        best = None
        for e in self.events:
            if best is None or e.val > best.val:
                best = e
            yield e.epochs, e.time, best.val, best

    def to_target(self, target: float) -> tuple[float, float]:
        for epochs, time, best, _ in self.anytime():
            if best >= target - 1e-12:
                return epochs, time
        return math.inf, math.inf

    def pick(self, budget: int) -> Event | None:
        """The epoch with the best validation Dice within `budget` epochs (what a search
        keeps: each trial's best checkpoint, the best of them)."""
        last = None
        for epochs, _, _, best in self.anytime():
            if epochs > budget:
                break
            last = best
        return last


def simulate(strategy: Strategy, table: Table, workers: int, budget: int) -> Trace:
    """Run `strategy` on `workers` simulated workers until `budget` epochs are spent or it is
    done. Each epoch of a trial ends `table.epoch_seconds[k]` after the previous one; results
    are handed to the strategy in the order of their simulated end times (ties: the order the
    epochs were started in)."""
    trace, heap, seq = Trace(), [], 0
    free, now, done = list(range(workers)), 0.0, False

    def fill() -> None:
        nonlocal seq, done
        while free and not done:
            trial = strategy.start()
            if trial is None:
                return
            if trial == DONE:
                done = True
                return
            if trial.finished:  # a resumed trial with nothing left: tell it so
                strategy.finished(trial, {})
                continue
            worker = free.pop(0)
            heapq.heappush(heap, (now + table.epoch_seconds[trial.epoch], seq, worker, trial))
            seq += 1

    fill()
    while heap and len(trace.events) < budget:
        now, _, worker, trial = heapq.heappop(heap)
        row = trial.step()
        trace.events.append(Event(len(trace.events) + 1, now, trial.index, row["epoch"],
                                  row["val_dice"], row["test_dice"]))
        decision = strategy.result(trial, row)
        if decision == CONTINUE and not trial.finished:
            heapq.heappush(heap, (now + table.epoch_seconds[trial.epoch], seq, worker, trial))
            seq += 1
            continue
        if decision == CONTINUE:  # it ran its last epoch; a STOP or PAUSE the strategy knows
            strategy.finished(trial, row)
        free.append(worker)
        free.sort()
        fill()
    return trace
