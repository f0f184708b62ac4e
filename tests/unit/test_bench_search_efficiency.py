"""The anytime curve and time-to-target of bench/search_efficiency.py, on hand-made results."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_efficiency",
                                                  ROOT / "bench" / "search_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder: Path, trials: dict[str, list[tuple[int, float, float]]]) -> Path:
    """Ray-like result.json lines (timestamp, time_total_s, val_dice) per trial."""
    (folder / "bench.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "bench.json").write_text(json.dumps({"start": 100.0, "wall_s": 50.0}))
    for name, rows in trials.items():
        (folder / name).mkdir()
        (folder / name / "result.json").write_text("".join(
            json.dumps({"timestamp": t, "time_total_s": s, "val_dice": d}) + "\n"
            for t, s, d in rows))
    return folder


def test_curve_orders_epochs_across_trials_and_keeps_the_best(bench, tmp_path):
    run = _write_run(tmp_path / "run", {
        "trial_a": [(110, 5.0, 0.1), (120, 15.0, 0.5), (130, 25.0, 0.4)],
        "trial_b": [(112, 6.0, 0.3), (125, 19.0, 0.2)],
    })
    points = bench.curve(run)
    assert [p["epochs"] for p in points] == [1, 2, 3, 4, 5]
    assert [p["best"] for p in points] == [0.1, 0.3, 0.5, 0.5, 0.5]
    assert [p["wall_s"] for p in points] == [10, 12, 20, 25, 30]


def test_to_target_counts_epochs_within_the_budget(bench):
    points = [{"epochs": i, "wall_s": 10.0 * i, "best": b}
              for i, b in enumerate([0.1, 0.3, 0.55, 0.6], 1)]
    assert bench.to_target(points, 0.55, budget=4) == (3, 30.0)
    assert bench.to_target(points, 0.55, budget=2) == (math.inf, math.inf)
    assert bench.to_target(points, 0.7, budget=4) == (math.inf, math.inf)


def test_grid_orderings_replays_each_trial_curve(bench, tmp_path):
    run = _write_run(tmp_path / "run", {"trial_a": [(1, 1.0, 0.1), (2, 2.0, 0.5)],
                                        "trial_b": [(1, 1.0, 0.1), (2, 2.0, 0.2)]})
    one = bench.grid_orderings(run, 0.5, n=200, workers=1)
    assert (one["p10"], one["p90"]) == (2, 4)  # a first: its 2nd epoch; b first: 2 + 2
    two = bench.grid_orderings(run, 0.5, n=200, workers=2)
    assert (two["p10"], two["p90"]) == (3, 4)  # side by side: 1 + 1 + its slot
    assert bench.grid_orderings(run, 0.6, n=10)["median_epochs_to_target"] == math.inf


@pytest.mark.parametrize("setup", ["small", "wide"])
def test_each_setup_gives_valid_specs_with_the_same_space(bench, tmp_path, setup):
    from search.spec import load_spec

    chosen = bench.SETUPS[setup]
    path = tmp_path / "base.yaml"
    path.write_text(bench.base_spec(chosen))
    specs = {name: load_spec(path, [*overrides, "search.seed=3"])
             for name, overrides in bench.strategies(chosen).items()}
    size = math.prod(len(v) for v in chosen["grid"].values())
    assert specs["grid"].search.num_trials == specs["random"].search.num_trials == size
    assert specs["grid"].grid() == {k: v for k, v in chosen["grid"].items()}
    assert specs["tpe_asha"].search.scheduler == "asha"
    assert specs["tpe_asha"].search.grace_period == chosen["grace_period"]
    # Random search and TPE search the same continuous box the grid's points lie in.
    assert set(specs["random"].searched()) == set(chosen["grid"]) \
        == set(specs["tpe_asha"].searched())
    assert specs["random"].train.epochs == chosen["epochs"]
