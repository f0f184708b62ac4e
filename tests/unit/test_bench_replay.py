"""The replay of bench/replay_core.py on a hand-made table: the trial reads the table epoch by
epoch and stops when told, the simulated clock orders results as N real workers would, and
segtune's real ASHA stops trials on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.curve_table import SPACE, sobol_design  # noqa: E402
from bench.replay_core import CONTINUE, DONE, STOP, ReplayTrial, Table, simulate  # noqa: E402
from bench.replay_strategies import FixedOrder  # noqa: E402


def write_table(path: Path, n: int = 16, epochs: int = 3, seconds=(1.0, 2.0, 3.0)) -> Path:
    """`n` Sobol configurations whose validation Dice at epoch k is (k / epochs) times a
    score that peaks at lr 1e-2, and whose test Dice is the validation Dice minus 0.05."""
    rows = []
    for i, config in enumerate(sobol_design(n)):
        score = 1.0 / (1.0 + abs(config["optimizer.lr"] - 1e-2) * 100)
        eps = [{"epoch": k, "seconds": seconds[k - 1], "val_dice": score * k / epochs,
                "test_dice": score * k / epochs - 0.05, "val_dice_per_region": {},
                "test_dice_per_region": {}} for k in range(1, epochs + 1)]
        rows.append({"index": i, "config": config, "epochs": eps})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def table(tmp_path) -> Table:
    return Table.load(write_table(tmp_path / "t.jsonl"), SPACE)


def test_trial_reads_the_table_epoch_by_epoch_and_respects_stop_at(table):
    trial = ReplayTrial("a", 5, table)
    rows = [trial.step() for _ in range(3)]
    assert [r["val_dice"] for r in rows] == pytest.approx(list(table.val[5]))
    assert [r["test_dice"] for r in rows] == pytest.approx(list(table.test[5]))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and trial.finished
    with pytest.raises(RuntimeError, match="already ran its 3 epochs"):
        trial.step()
    short = ReplayTrial("b", 5, table, stop_at=2)
    short.step(), short.step()
    assert short.finished


def test_nearest_answers_a_tabulated_configuration_by_itself(table):
    for i in (0, 7, 15):
        assert table.nearest(table.configs[i]) == i
    near = dict(table.configs[3], **{"optimizer.beta1": table.configs[3]["optimizer.beta1"]
                                     + 1e-4})
    assert table.nearest(near) == 3
    assert table.nearest(table.configs[3], exclude=3) != 3


class StopFirst(FixedOrder):
    """Stops the first trial after its first epoch."""

    def result(self, trial, row):
        return STOP if trial.key == 1 else CONTINUE


def test_the_clock_orders_results_as_two_real_workers_would(table):
    # Epochs last 1, 2, 3 s. Trial 1 (worker 0) stops at t=1: trial 3 starts there at once,
    # while trial 2 (worker 1) goes on: ends at 1, 3, 6; trial 3's at 2, 4, 7.
    trace = simulate(StopFirst(table, [0, 1, 2]), table, workers=2, budget=100)
    got = [(e.index, e.epoch, e.time) for e in trace.events]
    assert got == [(0, 1, 1.0), (1, 1, 1.0), (2, 1, 2.0), (1, 2, 3.0), (2, 2, 4.0),
                   (1, 3, 6.0), (2, 3, 7.0)]
    assert [e.epochs for e in trace.events] == list(range(1, 8))
    one = simulate(FixedOrder(table, [0, 1]), table, workers=1, budget=100)
    assert [e.time for e in one.events] == [1.0, 3.0, 6.0, 7.0, 9.0, 12.0]


def test_the_budget_ends_the_run_and_the_pick_is_the_best_seen(table):
    trace = simulate(FixedOrder(table, list(range(16))), table, workers=2, budget=10)
    assert len(trace.events) == 10
    best = max(trace.events, key=lambda e: e.val)
    assert trace.pick(10) is best
    epochs, _ = trace.to_target(best.val)
    assert epochs == best.epochs
    assert trace.to_target(2.0)[0] == float("inf")


def test_fixed_order_is_done_after_its_list(table):
    order = FixedOrder(table, [4])
    assert isinstance(order.start(), ReplayTrial)
    assert order.start() == DONE


def test_segtune_asha_stops_trials_at_its_rungs(tmp_path):
    from bench.curve_table import base_spec_text
    from bench.replay_strategies import SegtuneTpeAsha

    table = Table.load(write_table(tmp_path / "t.jsonl", n=32, epochs=8, seconds=[1.0] * 8),
                       SPACE)
    spec = tmp_path / "spec.yaml"
    spec.write_text(base_spec_text(8, 4).replace("grace_period: 4", "grace_period: 2")
                    .replace("num_trials: 36", "num_trials: 12"))
    strategy = SegtuneTpeAsha(table, str(spec), seed=0)
    trace = simulate(strategy, table, workers=2, budget=1000)
    per_trial: dict[int, int] = {}
    for e in trace.events:
        per_trial[e.index] = max(per_trial.get(e.index, 0), e.epoch)
    assert strategy.n == 12  # the spec's num_trials ended the search
    assert set(per_trial.values()) <= {2, 4, 8}  # rungs at 2 and 4, max_t 8
    assert 2 in per_trial.values() and 8 in per_trial.values()
    assert len(trace.events) < 12 * 8


class PauseFirst(FixedOrder):
    """Pauses trial 1 after epoch 1, resumes it once the others have started."""

    def __init__(self, table, order):
        super().__init__(table, order)
        self.paused = None

    def start(self):
        if self.paused is not None and self.n >= len(self.order):
            trial, self.paused = self.paused, None
            return trial
        return super().start()

    def result(self, trial, row):
        if trial.key == 1 and row["epoch"] == 1:
            self.paused = trial
            from bench.replay_core import PAUSE

            return PAUSE
        return CONTINUE


def test_a_paused_trial_frees_its_worker_and_resumes_where_it_stopped(table):
    trace = simulate(PauseFirst(table, [0, 1, 2]), table, workers=2, budget=100)
    got = [(e.index, e.epoch, e.time) for e in trace.events]
    # Trial 1 pauses at t=1, trial 3 takes its worker; trial 1 resumes (epoch 2 of 3) when
    # trial 2 ends at t=6, and ends at 6 + 2 + 3 = 11.
    assert got == [(0, 1, 1.0), (1, 1, 1.0), (2, 1, 2.0), (1, 2, 3.0), (2, 2, 4.0),
                   (1, 3, 6.0), (2, 3, 7.0), (0, 2, 8.0), (0, 3, 11.0)]


def test_optunas_pruner_stops_trials_on_the_replay(tmp_path):
    from bench.replay_strategies import OptunaPruned

    table = Table.load(write_table(tmp_path / "t.jsonl", n=32, epochs=8, seconds=[1.0] * 8),
                       SPACE)
    strategy = OptunaPruned(table, seed=0, pruner="sha", startup=4)
    trace = simulate(strategy, table, workers=2, budget=120)
    lengths = [len(t.intermediate_values) for t in strategy.study.trials
               if t.state.is_finished()]
    assert 4 in lengths and 8 in lengths and set(lengths) <= {4, 8}  # SH rung at min_resource
    assert len(trace.events) == 120
