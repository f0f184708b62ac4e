"""Search efficiency: a full grid vs random search vs segtune's default (TPE + ASHA), with the
same compute budget, on the phantom. Each strategy is a real search (`search.api.run_search`:
Ray Tune, Optuna, MLflow, a checkpoint per epoch); compute is counted in trained epochs.

(a) grid: every point of a 3 x 3 grid (lr x beta1), each trial to the last epoch (FIFO);
(b) random: as many random points of the same box, each to the last epoch (FIFO);
(c) tpe_asha: TPE proposes, ASHA stops early, more trials in about the same epochs.

The anytime curve of a search is built from Ray's per-trial `result.json` files: every reported
epoch of every trial, ordered in time across trials, gives (epochs trained so far, best
validation Dice so far). Target: the grid's best validation Dice minus 0.01; time-to-target is
the epochs (and wall seconds) a search needed to reach it. Random and TPE + ASHA run with
several seeds, interleaved with each other; the report gives medians.

    python bench/search_efficiency.py --seeds 5 --storage /tmp/search-eff
    python bench/search_efficiency.py --storage /tmp/search-eff --analyse-only
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.01
LOOSER = (0.01, 0.02, 0.03, 0.05)

# Two setups. `small` (the first run): a 3 x 3 grid of 8-epoch trials on 2 validation
# patients, where no trial had levelled off. `wide`: a grid as hand-written scripts grow them
# (3 learning rates x 3 beta1 x 2 weight decays), trials twice as long, 4 validation patients,
# ASHA's first rung where validation Dice already ranks (epoch 4).
SETUPS = {
    "small": {"cases": 10, "val_fraction": 0.2, "test_fraction": 0.2, "epochs": 8,
              "hd95": True, "wd": "1.0e-4",
              "grid": {"optimizer.lr": [3.0e-3, 1.0e-2, 3.0e-2],
                       "optimizer.beta1": [0.8, 0.9, 0.95]},
              "grace_period": 2, "trials_factor": 2, "trials_minus": 2},
    "wide": {"cases": 14, "val_fraction": 0.3, "test_fraction": 0.15, "epochs": 16,
             "hd95": False, "wd": "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
             "grid": {"optimizer.lr": [3.0e-3, 1.0e-2, 3.0e-2],
                      "optimizer.beta1": [0.8, 0.9, 0.95],
                      "optimizer.weight_decay": [1.0e-4, 1.0e-2]},
             "grace_period": 4, "trials_factor": 2, "trials_minus": 0},
}


def base_spec(setup: dict) -> str:
    """One small, fast setup: a phantom, a 3-level UNet, 32^3 patches, schedule-free AdamW
    (anytime weights suit early stopping); lr x beta1 (x weight decay) searched."""
    return f"""
data: {{source: phantom, cases: {setup['cases']}, val_fraction: {setup['val_fraction']},
        test_fraction: {setup['test_fraction']}}}
model: {{name: unet, channels: [8, 16, 32], strides: [2, 2], num_res_units: 1, init_seed: 0}}
optimizer:
  name: schedulefree_adamw
  lr: {{type: float, low: 3.0e-3, high: 3.0e-2, log: true}}
  beta1: {{type: float, low: 0.8, high: 0.95}}
  weight_decay: {setup['wd']}
schedule: {{warmup_fraction: 0.1}}
train: {{epochs: {setup['epochs']}, steps_per_epoch: 10, batch_size: 2,
         patch_size: [32, 32, 32], threads: 1, device: cpu,
         val_hd95: {str(setup['hd95']).lower()}}}
search: {{max_concurrent: 2, max_failures: 0}}
resources: {{cpu: 1}}
soup: {{enabled: false}}
"""


def strategies(setup: dict) -> dict[str, list[str]]:
    """The --set overrides of each strategy. ASHA (rungs at grace_period x 2^k epochs) spends
    a few epochs per trial on average, so about `trials_factor` times the grid's trials spend
    about the grid's epochs."""
    grid = setup["grid"]
    size = math.prod(len(v) for v in grid.values())
    return {
        "grid": ["search.sampler=grid", "search.scheduler=fifo", f"search.num_trials={size}",
                 *(f"{k}={{type: categorical, choices: {v}}}" for k, v in grid.items())],
        "random": ["search.sampler=random", "search.scheduler=fifo",
                   f"search.num_trials={size}"],
        "tpe_asha": ["search.sampler=tpe", "search.scheduler=asha",
                     f"search.grace_period={setup['grace_period']}",
                     "search.reduction_factor=2",
                     f"search.num_trials={setup['trials_factor'] * size - setup['trials_minus']}"],
    }


def run_one(name: str, overrides: list[str], seed: int, storage: Path) -> float:
    """Run one search; returns its wall seconds (command to summary, soups off)."""
    from search.api import run_search
    from search.spec import load_spec

    spec_path = storage / "base.yaml"
    spec = load_spec(spec_path, [*overrides, f"search.seed={seed}"])
    t0 = time.time()
    run_search(spec, spec_path, name=name, storage=storage)
    wall = time.time() - t0
    (storage / name / "bench.json").write_text(json.dumps({"start": t0, "wall_s": wall}))
    return wall


def curve(run_dir: Path) -> list[dict[str, float]]:
    """Every reported epoch of every trial of a search in time order (Ray's `timestamp`, whole
    seconds; ties within a second broken by `time_total_s`): epochs trained so far, wall
    seconds since the search started, best validation Dice so far."""
    start = json.loads((run_dir / "bench.json").read_text())["start"]
    rows = []
    for result_file in run_dir.glob("trial_*/result.json"):
        for line in result_file.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append((r["timestamp"], r["time_total_s"], r["val_dice"]))
    rows.sort()
    points, best = [], 0.0
    for i, (stamp, _, dice) in enumerate(rows, 1):
        best = max(best, dice)
        points.append({"epochs": i, "wall_s": stamp - start, "best": best})
    return points


def to_target(points: list[dict[str, float]], target: float, budget: int
              ) -> tuple[float, float]:
    """(epochs, wall seconds) when the best-so-far first reaches `target` within `budget`
    epochs; (inf, inf) if it does not."""
    for p in points:
        if p["epochs"] > budget:
            break
        if p["best"] >= target - 1e-12:
            return p["epochs"], p["wall_s"]
    return math.inf, math.inf


def grid_orderings(run_dir: Path, target: float, n: int = 2000, workers: int = 2) -> dict:
    """The grid's epochs to target had its points come in another order: `n` random orders,
    trials (all the same length) taken in turn by `workers` workers that advance one epoch at
    a time. Training is deterministic per point, so each trial's own curve is reused."""
    import random

    trials = []
    for result_file in sorted(run_dir.glob("trial_*/result.json")):
        dice = [json.loads(line)["val_dice"] for line in result_file.read_text().splitlines()
                if line.strip()]
        trials.append(dice)
    length = max(len(d) for d in trials)
    rng = random.Random(0)
    costs = []
    for _ in range(n):
        order = rng.sample(trials, len(trials))
        cost = math.inf
        for i, dice in enumerate(order):
            batch, slot = divmod(i, workers)
            running = min(workers, len(order) - batch * workers)
            for epoch, d in enumerate(dice, 1):
                if d >= target - 1e-12:
                    cost = min(cost, batch * workers * length + (epoch - 1) * running + slot + 1)
                    break
        costs.append(cost)
    costs.sort()
    return {"orders": n, "median_epochs_to_target": statistics.median(costs),
            "p10": costs[n // 10], "p90": costs[9 * n // 10]}


def analyse(storage: Path, seeds: int) -> dict:
    """Curves, target and time-to-target of every finished search under `storage`."""
    grid_dir = storage / "grid"
    grid_points = curve(grid_dir)
    budget = len(grid_points)  # the grid's epochs: every trial to the end
    grid_summary = json.loads((grid_dir / "summary.json").read_text())
    grid_final = max(t["val_dice"] for t in grid_summary["trials"]
                     if t["val_dice"] is not None)
    target = grid_final - TOLERANCE
    runs = {"grid": [{"seed": 0, "dir": grid_dir}]}
    for strategy in ("random", "tpe_asha"):
        runs[strategy] = [{"seed": s, "dir": storage / f"{strategy}_s{s}"} for s in range(seeds)
                          if (storage / f"{strategy}_s{s}" / "summary.json").is_file()]
    out = {"budget_epochs": budget, "grid_best_val_dice": grid_final, "target": target,
           "tolerance": TOLERANCE, "strategies": {}}
    for strategy, items in runs.items():
        records = []
        for item in items:
            points = curve(item["dir"])
            epochs, wall = to_target(points, target, budget)
            summary = json.loads((item["dir"] / "summary.json").read_text())
            meta = json.loads((item["dir"] / "bench.json").read_text())
            records.append({
                "seed": item["seed"], "epochs_to_target": epochs, "wall_s_to_target": wall,
                "total_epochs": len(points), "search_wall_s": meta["wall_s"],
                "trials": len(summary["trials"]),
                "best_val_dice": max(p["best"] for p in points),
                "best_in_budget": max(p["best"] for p in points if p["epochs"] <= budget),
                "curve": points,
            })
        med = statistics.median([r["epochs_to_target"] for r in records])
        out["strategies"][strategy] = {
            "runs": records,
            "median_epochs_to_target": med,
            "median_wall_s_to_target": statistics.median(r["wall_s_to_target"]
                                                         for r in records),
            "median_search_wall_s": statistics.median(r["search_wall_s"] for r in records),
        }
    out["grid_other_orders"] = grid_orderings(grid_dir, target)
    # The same curves against looser targets: how the answer depends on the 0.01.
    out["by_tolerance"] = {
        str(tol): {strategy: statistics.median(
            to_target(r["curve"], grid_final - tol, budget)[0] for r in block["runs"])
            for strategy, block in out["strategies"].items()}
        for tol in LOOSER}
    # A target not tied to a grid point: the best any search found within the budget.
    best_any = max(r["best_in_budget"] for block in out["strategies"].values()
                   for r in block["runs"])
    out["best_any"] = {"target": best_any - TOLERANCE, "best": best_any, **{
        strategy: {"median_epochs": statistics.median(
            to_target(r["curve"], best_any - TOLERANCE, budget)[0] for r in block["runs"]),
            "reached": sum(not math.isinf(to_target(r["curve"], best_any - TOLERANCE,
                                                    budget)[0]) for r in block["runs"]),
            "runs": len(block["runs"])}
        for strategy, block in out["strategies"].items()}}
    grid_epochs = out["strategies"]["grid"]["median_epochs_to_target"]
    for block in out["strategies"].values():
        block["median_ratio_to_grid_budget"] = block["median_epochs_to_target"] / budget
        block["median_ratio_to_grid"] = block["median_epochs_to_target"] / grid_epochs
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"grid": "black", "random": "tab:blue", "tpe_asha": "tab:red"}
    labels = {"grid": "grid (each trial to the end)", "random": "random, no early stopping",
              "tpe_asha": "TPE + ASHA (segtune default)"}
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for strategy, block in result["strategies"].items():
        for i, run in enumerate(block["runs"]):
            xs = [0] + [p["epochs"] for p in run["curve"]]
            ys = [0.0] + [p["best"] for p in run["curve"]]
            ax.step(xs, ys, where="post", color=colours[strategy], alpha=0.8, lw=1.2,
                    label=labels[strategy] if i == 0 else None)
    other = result["grid_other_orders"]["median_epochs_to_target"]
    if not math.isinf(other):
        ax.plot([other], [result["target"]], "o", color="black", mfc="white", ms=6,
                label="grid, median over orders of its points")
    ax.axhline(result["target"], color="grey", ls="--", lw=0.8,
               label=f"target: grid best - {TOLERANCE}")
    ax.axvline(result["budget_epochs"], color="grey", ls=":", lw=0.8, label="grid's budget")
    ax.axvline(result["budget_epochs"] / 4, color="green", ls=":", lw=0.8, label="1/4 budget")
    ax.set_xlabel("compute spent (trained epochs, all trials)")
    ax.set_ylabel("best validation Dice so far")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def table(result: dict) -> str:
    budget = result["budget_epochs"]
    lines = ["| strategy | seed | trials | epochs spent | best val Dice | epochs to target "
             "| / grid budget | wall to target | search wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for strategy, block in result["strategies"].items():
        for r in block["runs"]:
            lines.append(
                f"| {strategy} | {r['seed']} | {r['trials']} | {r['total_epochs']} "
                f"| {r['best_val_dice']:.3f} | {_num(r['epochs_to_target'])} "
                f"| {_num(r['epochs_to_target'] / budget, 2)} "
                f"| {_secs(r['wall_s_to_target'])} | {r['search_wall_s']:.0f} s |")
        lines.append(
            f"| **{strategy} median** | | | | | **{_num(block['median_epochs_to_target'])}** "
            f"| **{_num(block['median_ratio_to_grid_budget'], 2)}** "
            f"| {_secs(block['median_wall_s_to_target'])} "
            f"| {block['median_search_wall_s']:.0f} s |")
    return "\n".join(lines)


def _secs(x: float) -> str:
    return _num(x) + ("" if math.isinf(x) else " s")


def _finite(x):
    """JSON has no infinity: a target not reached is null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and math.isinf(x) else x


def _num(x: float, digits: int = 0) -> str:
    return "not reached" if math.isinf(x) else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=sorted(SETUPS), default="small")
    parser.add_argument("--seeds", type=int, default=3, help="search seeds of TPE + ASHA")
    parser.add_argument("--random-seeds", type=int, default=None,
                        help="search seeds of random search (default: --seeds)")
    parser.add_argument("--storage", default="/tmp/search-eff")
    parser.add_argument("--out", default=None,
                        help="json/png path stem (default: bench/search_efficiency[_SETUP])")
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    storage = Path(args.storage)
    setup = SETUPS[args.setup]
    random_seeds = args.seeds if args.random_seeds is None else args.random_seeds
    out = Path(args.out or HERE / ("search_efficiency" if args.setup == "small"
                                   else f"search_efficiency_{args.setup}"))

    if not args.analyse_only:
        import ray

        storage.mkdir(parents=True, exist_ok=True)
        (storage / "base.yaml").write_text(base_spec(setup))
        overrides = strategies(setup)
        # A Ray of our own (never another user's `ray start` cluster), shared by every search.
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        order = [("grid", "grid", 0)]
        for seed in range(max(args.seeds, random_seeds)):  # interleaved: load hits both alike
            order += [(f"random_s{seed}", "random", seed)] * (seed < random_seeds)
            order += [(f"tpe_asha_s{seed}", "tpe_asha", seed)] * (seed < args.seeds)
        for name, strategy, seed in order:
            if (storage / name / "summary.json").is_file():
                continue  # done in an earlier, interrupted invocation
            wall = run_one(name, overrides[strategy], seed, storage)
            logging.info("BENCH %s done in %.0f s", name, wall)
        ray.shutdown()

    result = analyse(storage, max(args.seeds, random_seeds))
    out.with_suffix(".json").write_text(json.dumps(_finite(result), indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"budget {result['budget_epochs']} epochs; grid best val Dice "
          f"{result['grid_best_val_dice']:.3f}; target {result['target']:.3f}\n")
    print(table(result))
    print("\nmedian epochs to (grid best - tolerance):")
    for tol, row in result["by_tolerance"].items():
        print(f"  {tol}: " + ", ".join(f"{k} {_num(v)}" for k, v in row.items()))
    best_any = result["best_any"]
    print(f"\nagainst the best any search found ({best_any['best']:.3f}) - {TOLERANCE}: "
          + ", ".join(f"{k} {_num(v['median_epochs'])} (reached {v['reached']}/{v['runs']})"
                      for k, v in best_any.items() if isinstance(v, dict)))
    other = result["grid_other_orders"]
    print(f"\ngrid in {other['orders']} other orders of its points: median "
          f"{_num(other['median_epochs_to_target'])} epochs to target "
          f"(10th-90th percentile {_num(other['p10'])}-{_num(other['p90'])})")


if __name__ == "__main__":
    main()
