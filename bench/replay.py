"""The race on the table of learning curves (issue 27, part 3): every strategy of
`bench/replay_strategies.py`, many seeds, on a simulated clock with the demo's 2 workers.

For each strategy and seed: the anytime curve (best validation Dice found against epochs spent
and simulated seconds), epochs and seconds to the table's best minus 0.01, and the test Dice
of the epoch it would pick (the best validation Dice it saw within the budget). Baseline: the
table's whole design (a dense Sobol design: "the grid") in random orders, each configuration
to its end.

    PYTHONPATH=. python bench/replay.py --seeds 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.curve_table import SPACE  # noqa: E402
from bench.replay_core import Table, simulate  # noqa: E402
from bench.replay_strategies import (  # noqa: E402
    Dehb,
    FixedOrder,
    OptunaPruned,
    RayBohb,
    SegtuneSyncHalving,
    SegtuneTpeAsha,
    SmacHyperband,
    SyneTune,
    random_order,
    warm_history,
)

TOLERANCE = 0.01
WORKERS = 2  # the shipped demo's search.max_concurrent
SPEC = HERE / "curve_table.yaml"


def strategies(table: Table, workdir: str) -> dict[str, Any]:
    """name -> factory(seed) of every raced strategy."""
    everything = list(range(len(table.configs)))
    return {
        "grid (design) in random order": lambda s: FixedOrder(
            table, random_order(table, everything, 1000 + s)),
        "segtune TPE + ASHA": lambda s: SegtuneTpeAsha(table, str(SPEC), s),
        # The same, given the whole budget as the peers are (the spec's 36 trials spend ~320
        # epochs, then the search ends): trials go on until the design's epochs are spent.
        "segtune TPE + ASHA, no trial cap": lambda s: SegtuneTpeAsha(
            table, str(SPEC), s, ["search.num_trials=100000"]),
        "Ray TuneBOHB + HyperBandForBOHB": lambda s: RayBohb(table, s),
        "Optuna TPE + HyperbandPruner": lambda s: OptunaPruned(table, s, "hyperband"),
        "Optuna TPE + SuccessiveHalvingPruner": lambda s: OptunaPruned(table, s, "sha"),
        "Optuna GPSampler + HyperbandPruner": lambda s: OptunaPruned(table, s, "hyperband",
                                                                     sampler="gp"),
        "Syne Tune BOHB (async)": lambda s: SyneTune(table, s, "BOHB"),
        "Syne Tune ASHA (random)": lambda s: SyneTune(table, s, "ASHA"),
        "SMAC3 Hyperband + RF": lambda s: SmacHyperband(table, s, workdir),
        "DEHB (DE + Hyperband)": lambda s: Dehb(table, s, workdir),
    }


def variants(table: Table) -> dict[str, Any]:
    """segtune's TPE + ASHA with one setting changed at a time (issue 27, part 4)."""
    spec = str(SPEC)

    def seg(overrides=(), **kw):
        return lambda s: SegtuneTpeAsha(table, spec, s, list(overrides), **kw)

    return {
        "segtune default (36 trials, 10 start-up, grace 4, rf 2)": seg(),
        "5 start-up trials": seg(tpe={"n_startup_trials": 5}),
        "multivariate TPE": seg(tpe={"multivariate": True}),
        "multivariate TPE, 5 start-up": seg(tpe={"n_startup_trials": 5, "multivariate": True}),
        "ASHA reduction factor 3": seg(["search.reduction_factor=3"]),
        "ASHA grace period 2": seg(["search.grace_period=2"]),
        "ASHA grace period 6": seg(["search.grace_period=6"]),
        "48 trials": seg(["search.num_trials=48"]),
        "random sampler (no TPE)": seg(["search.sampler=random"]),
        "random sampler, no trial cap": seg(["search.sampler=random",
                                             "search.num_trials=100000"]),
        "20 start-up trials": seg(tpe={"n_startup_trials": 20}),
        "synchronous halving (Ray's HyperBandScheduler)": lambda s: SegtuneSyncHalving(
            table, spec, s),
        "ASHA with 2 brackets (async Hyperband)": lambda s: with_brackets(
            SegtuneTpeAsha(table, spec, s), 2),
        "ASHA with 3 brackets (async Hyperband)": lambda s: with_brackets(
            SegtuneTpeAsha(table, spec, s), 3),
        "stopped trials told COMPLETE (Ray's OptunaSearch)": seg(plain_optuna=True),
        # Part 5: warm-started from a whole earlier search with another seed (its epochs are
        # not counted: they were spent before).
        "warm start from a search with seed + 100": lambda s: SegtuneTpeAsha(
            table, spec, s, history=warm_history(table, spec, s + 100, WORKERS,
                                                 len(table.configs) * table.epochs)),
    }


def chosen(name: str, only: str | None, skip: str | None) -> bool:
    """Whether `name` is raced under --only / --skip (comma-separated substrings)."""
    def hit(words: str) -> bool:
        return any(w and w in name for w in words.split(","))

    return (only is None or hit(only)) and (skip is None or not hit(skip))


def with_brackets(strategy: SegtuneTpeAsha, brackets: int) -> SegtuneTpeAsha:
    """segtune's strategy with Ray's ASHAScheduler over `brackets` brackets (asynchronous
    Hyperband: bracket k's first rung at grace_period x reduction_factor^k; a new trial joins
    the bracket drawn with Hyperband's weights)."""
    from ray.tune.schedulers import ASHAScheduler

    old = strategy.scheduler
    strategy.scheduler = ASHAScheduler(
        time_attr="training_iteration", metric=old._metric, mode="max", max_t=old._max_t,
        grace_period=strategy.spec.search.grace_period,
        reduction_factor=strategy.spec.search.reduction_factor, brackets=brackets)
    return strategy


def run_one(factory, seed: int, table: Table, budget: int, target: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    trace = simulate(factory(seed), table, WORKERS, budget)
    epochs, seconds = trace.to_target(target)
    pick = trace.pick(budget)
    points = [(e, t, best) for e, t, best, _ in trace.anytime()]
    return {"seed": seed, "epochs_to_target": epochs, "seconds_to_target": seconds,
            "epochs_spent": len(trace.events), "pick_val": pick.val, "pick_test": pick.test,
            "pick_config": table.configs[pick.index], "pick_epoch": pick.epoch,
            "steps": steps(points),
            "replay_s": round(time.perf_counter() - t0, 2)}


def steps(points: list[tuple[int, float, float]]) -> list[list[float]]:
    """The anytime curve where it rises, and its end: [epochs, simulated s, best]."""
    out: list[list[float]] = []
    for i, (e, t, best) in enumerate(points):
        if not out or best > out[-1][2] or i == len(points) - 1:
            out.append([e, round(t, 1), round(best, 4)])
    return out


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th percentile), infinity for seeds that never reached the target."""
    xs = sorted(xs)

    def q(p: float) -> float:  # linear between order statistics; infinite next to infinity
        pos = p * (len(xs) - 1)
        lo, hi = xs[math.floor(pos)], xs[math.ceil(pos)]
        w = pos - math.floor(pos)
        return lo if w == 0 else hi if math.isinf(hi) else lo + w * (hi - lo)

    return q(0.25), q(0.5), q(0.75)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("epochs_to_target", "seconds_to_target", "pick_test", "pick_val",
                "epochs_spent"):
        out[key] = quartiles([r[key] for r in runs])
    out["reached"] = sum(not math.isinf(r["epochs_to_target"]) for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(HERE / "curve_table.jsonl"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None,
                        help="use the table's first N configurations (lines)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="merge finished races (--only parts) into --out, then report")
    parser.add_argument("--budget", type=int, default=None,
                        help="epochs per search (default: the whole design's)")
    parser.add_argument("--only", default=None,
                        help="strategies whose name contains one of these (comma-separated)")
    parser.add_argument("--skip", default=None,
                        help="not the strategies whose name contains one of these")
    parser.add_argument("--variants", action="store_true",
                        help="race variants of segtune's default instead of the peers")
    parser.add_argument("--out", default=None,
                        help="json/png stem (default: bench/replay, bench/replay_variants)")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out))
    table = Table.load(args.table, SPACE, args.limit)
    design = len(table.configs) * table.epochs
    budget = args.budget or design
    target = table.best_val - TOLERANCE
    result: dict[str, Any] = {
        "configs": len(table.configs), "epochs": table.epochs, "design_epochs": design,
        "budget": budget, "table_file": str(args.table), "limit": args.limit,
        "table_best_val": table.best_val, "target": target,
        "workers": WORKERS, "epoch_seconds": table.epoch_seconds,
        "nearest_error": table.nearest_error(), "strategies": {}}
    with tempfile.TemporaryDirectory(prefix="replay-") as workdir:
        raced = variants(table) if args.variants else strategies(table, workdir)
        for name, factory in raced.items():
            if not chosen(name, args.only, args.skip):
                continue
            runs = [run_one(factory, s, table, budget, target) for s in range(args.seeds)]
            result["strategies"][name] = {"runs": runs, **summarise(runs)}
            print(line(name, result["strategies"][name], design), flush=True)
            # Each strategy's seeds are kept as soon as they are done (a long race can stop).
            partial = Path(args.out or "replay").with_suffix(".partial.json")
            partial.write_text(json.dumps(_finite(result)) + "\n")
    if "segtune TPE + ASHA" in result["strategies"]:
        result["aim"] = aim(result)
        print(json.dumps(_finite(result["aim"])))
    out = Path(args.out or HERE / ("replay_variants" if args.variants else "replay"))
    out.with_suffix(".json").write_text(json.dumps(_finite(result)) + "\n")
    from bench.replay_report import plot, table

    plot(result, out.with_suffix(".png"))
    print(table(result))


def merge(parts: list[str], out: Path) -> None:
    """One result from several `--only` runs on the same table."""
    results = [json.loads(Path(p).read_text()) for p in parts]
    result = results[0]
    for other in results[1:]:
        assert other["target"] == result["target"], "races on different tables"
        result["strategies"].update(other["strategies"])
    result["strategies"] = {k: _infinite(v) for k, v in result["strategies"].items()}
    if "segtune TPE + ASHA" in result["strategies"]:
        result["aim"] = aim(result)
        print(json.dumps(_finite(result["aim"])))
    out.with_suffix(".json").write_text(json.dumps(_finite(result)) + "\n")
    from bench.replay_report import plot, table

    plot(result, out.with_suffix(".png"))
    print(table(result))


def _infinite(block: dict[str, Any]) -> dict[str, Any]:
    """A strategy's block read back from JSON: null (not reached) is infinity again."""
    for run in block["runs"]:
        if "curve" in run:  # a race written before `steps`
            run["steps"] = steps(list(zip(range(1, len(run["curve"]) + 1), run.pop("times"),
                                          run.pop("curve"), strict=True)))
        for key in ("epochs_to_target", "seconds_to_target"):
            run[key] = math.inf if run[key] is None else run[key]
    block.update(summarise(block["runs"]))
    return block


def aim(result: dict[str, Any]) -> dict[str, Any]:
    """Part 6: segtune's median epochs to target against a quarter of the design's epochs, and
    every peer whose median is better than segtune's by more than segtune's IQR."""
    ours = result["strategies"]["segtune TPE + ASHA"]["epochs_to_target"]
    iqr = ours[2] - ours[0]
    ratio = ours[1] / result["design_epochs"]
    better = {name: b["epochs_to_target"][1] for name, b in result["strategies"].items()
              if b["epochs_to_target"][1] < ours[1] - iqr}
    return {"segtune_median_epochs": ours[1], "segtune_iqr": iqr, "ratio_to_design": ratio,
            "quarter_met": ratio <= 0.25, "peers_better_by_more_than_iqr": better}


def line(name: str, block: dict[str, Any], design: int) -> str:
    e, s, t = block["epochs_to_target"], block["seconds_to_target"], block["pick_test"]
    return (f"{name:38s} epochs {_n(e[1])} [{_n(e[0])}-{_n(e[2])}] ({_n(e[1] / design, 2)} of "
            f"the design)  sim {_n(s[1] / 60, 1)} min [{_n(s[0] / 60, 1)}-{_n(s[2] / 60, 1)}]"
            f"  test {t[1]:.3f} [{t[0]:.3f}-{t[2]:.3f}]  reached {block['reached']}")


def _n(x: float, digits: int = 0) -> str:
    return "-" if math.isinf(x) or math.isnan(x) else f"{x:.{digits}f}"


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and math.isinf(x) else x


if __name__ == "__main__":
    main()
