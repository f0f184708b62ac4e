"""Does the replay's ranking hold in real searches? (issue 27, part 4)

Real searches (`search.api.run_search`: Ray Tune, Optuna, MLflow, a checkpoint per epoch) on
the very setup the learning-curve table was made with (`bench/curve_table.yaml`: phantom, UNet
[8, 16, 32], schedule-free AdamW, 12 epochs x 8 steps, 2 trials at a time, soups off), for
segtune's default and the variants named with `--variant`, over `--seeds` search seeds,
interleaved so that machine load hits them alike. The target is the table's: its best
validation Dice minus 0.01, so "epochs to target" means the same as in the replay. The replay's
figures for the same strategies (`bench/replay_variants.json`) are printed beside them.

    python bench/race_confirm.py --seeds 3 --storage /work/data/race-confirm \
        --variant "ASHA grace period 2=search.grace_period=2"
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.curve_table import SPACE  # noqa: E402
from bench.replay_core import Table  # noqa: E402
from bench.search_efficiency import _finite, curve, to_target  # noqa: E402

DEFAULT = "segtune default (36 trials, 10 start-up, grace 4, rf 2)"
TOLERANCE = 0.01


def run_one(overrides: list[str], seed: int, run_dir: Path) -> None:
    """One real search of the table's spec with `overrides` and `search.seed`."""
    from search.api import run_search
    from search.spec import load_spec

    spec_path = HERE / "curve_table.yaml"
    spec = load_spec(spec_path, [*overrides, f"search.seed={seed}"])
    t0 = time.time()
    run_search(spec, spec_path, name=run_dir.name, storage=run_dir.parent)
    (run_dir / "bench.json").write_text(json.dumps({"start": t0, "wall_s": time.time() - t0}))


def record(run_dir: Path, target: float) -> dict[str, Any]:
    """Epochs and wall seconds to the target, epochs spent, the pick's validation and test
    Dice (the best trial as the run's own summary names it)."""
    points = curve(run_dir)
    epochs, wall = to_target(points, target, budget=10**9)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]
    return {"epochs_to_target": epochs, "wall_s_to_target": wall, "epochs_spent": len(points),
            "trials": len(summary["trials"]), "pick_val": best["val_dice"],
            "pick_test": best.get("test_dice"),
            "search_wall_s": json.loads((run_dir / "bench.json").read_text())["wall_s"]}


def quartiles(xs: list[float]) -> list[float]:
    xs = sorted(xs)
    if len(xs) < 2:
        return [xs[0]] * 3
    q = statistics.quantiles(xs, n=4, method="inclusive") if not any(map(math.isinf, xs)) \
        else [xs[len(xs) // 4], statistics.median(xs), xs[(3 * len(xs)) // 4]]
    return [q[0], statistics.median(xs), q[2]]


def replay_figures(name: str) -> str:
    path = HERE / "replay_variants.json"
    if not path.is_file():
        return "-"
    block = json.loads(path.read_text())["strategies"].get(name)
    if block is None:
        return "-"
    xs = [math.inf if r["epochs_to_target"] is None else r["epochs_to_target"]
          for r in block["runs"]]
    lo, med, hi = quartiles(xs)
    return f"{_num(med)} [{_num(lo)}-{_num(hi)}] over {len(xs)} seeds"


def _num(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{x:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--storage", default="/work/data/race-confirm")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                        help="a strategy: its replay name, '=', comma-separated --set overrides")
    parser.add_argument("--out", default=str(HERE / "race_confirm.json"))
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    storage = Path(args.storage)
    strategies = {DEFAULT: []}
    for item in args.variant:
        name, _, overrides = item.partition("=")
        strategies[name] = overrides.split(",")
    slug = {name: f"s{i}" for i, name in enumerate(strategies)}
    table = Table.load(HERE / "curve_table.jsonl", SPACE)
    target = table.best_val - TOLERANCE
    if not args.analyse_only:
        import ray

        storage.mkdir(parents=True, exist_ok=True)
        for attempt in range(20):  # Ray gives its raylet 30 s to start: too few at high load
            try:
                ray.init(address="local", num_cpus=2, include_dashboard=False)
                break
            except Exception:
                ray.shutdown()
                if attempt == 19:
                    raise
                logging.warning("ray.init failed (attempt %d); trying again", attempt + 1)
                time.sleep(20)
        for seed in range(args.seeds):  # interleaved: load hits every strategy alike
            for name, overrides in strategies.items():
                run_dir = storage / f"{slug[name]}_seed{seed}"
                if not (run_dir / "bench.json").is_file():
                    run_one(overrides, seed, run_dir)
                    logging.info("BENCH %s seed %d done", name, seed)
        ray.shutdown()
    result: dict[str, Any] = {"table_configs": len(table.configs), "target": target,
                              "table_best_val": table.best_val, "strategies": {}}
    print(f"target {target:.3f} (table best {table.best_val:.3f} - {TOLERANCE}, "
          f"{len(table.configs)} configurations)\n")
    print("| strategy | real: epochs to target per seed | real: median [IQR] "
          "| replay: median [IQR] | real: val / test Dice of the pick (median) | epochs spent |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, overrides in strategies.items():
        runs = [record(storage / f"{slug[name]}_seed{s}", target) | {"seed": s}
                for s in range(args.seeds)
                if (storage / f"{slug[name]}_seed{s}" / "bench.json").is_file()]
        if not runs:
            continue
        xs = [r["epochs_to_target"] for r in runs]
        lo, med, hi = quartiles(xs)
        result["strategies"][name] = {"overrides": overrides, "runs": runs,
                                      "median_epochs_to_target": med, "iqr": [lo, hi]}
        print(f"| {name} | {', '.join(map(_num, xs))} | {_num(med)} [{_num(lo)}-{_num(hi)}] "
              f"| {replay_figures(name)} "
              f"| {statistics.median(r['pick_val'] for r in runs):.3f} / "
              f"{statistics.median(r['pick_test'] or 0 for r in runs):.3f} "
              f"| {statistics.median(r['epochs_spent'] for r in runs):.0f} |")
    Path(args.out).write_text(json.dumps(_finite(result)) + "\n")


if __name__ == "__main__":
    main()
