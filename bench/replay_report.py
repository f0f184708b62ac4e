"""The race's plot and table (bench/replay.py): median anytime curves with their
interquartile band, against epochs spent and against simulated wall time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def at(curve: list[float], xs: list[float], grid: np.ndarray) -> np.ndarray:
    """The best-so-far `curve` (reached at `xs`) read at each point of `grid` (0 before its
    first point, its last value after its end)."""
    out = np.zeros(len(grid))
    j, best = 0, 0.0
    for i, g in enumerate(grid):
        while j < len(xs) and xs[j] <= g:
            best = curve[j]
            j += 1
        out[i] = best
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90, sharey=True)
    budget = result["budget"]
    t_max = max(r["steps"][-1][1] for b in result["strategies"].values() for r in b["runs"])
    grids = (np.arange(1, budget + 1, dtype=float), np.linspace(0, t_max, 400))
    for name, block in result["strategies"].items():
        for ax, grid, key in zip(axes, grids, ("epochs", "times"), strict=True):
            col = 0 if key == "epochs" else 1
            rows = np.stack([at([s[2] for s in r["steps"]], [s[col] for s in r["steps"]], grid)
                             for r in block["runs"]])
            lo, mid, hi = np.percentile(rows, [25, 50, 75], axis=0)
            x = grid if key == "epochs" else grid / 60
            (line,) = ax.plot(x, mid, lw=1.4, label=name)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
    for ax in axes:
        ax.axhline(result["target"], color="grey", ls="--", lw=0.8,
                   label=f"table best - 0.01 ({result['target']:.3f})")
        ax.grid(alpha=0.3)
        ax.set_ylim(max(0.0, result["target"] - 0.15), result["table_best_val"] + 0.01)
    axes[0].axvline(result["design_epochs"] / 4, color="green", ls=":", lw=0.8,
                    label="1/4 of the design's epochs")
    axes[0].set_xlabel("epochs spent (all trials)")
    axes[1].set_xlabel(f"simulated wall time, {result['workers']} workers (minutes)")
    axes[0].set_ylabel("best validation Dice found (median, IQR band)")
    axes[0].legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def table(result: dict[str, Any]) -> str:
    """The race as a Markdown table: medians [IQR] over seeds."""
    design = result["design_epochs"]
    quarter = design / 4
    lines = ["| strategy | epochs to target | / design | simulated min to target | reached "
             "| reached within 1/4 of the design | best val Dice at 1/4 of the design "
             "| test Dice of the pick | val Dice of the pick |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, b in result["strategies"].items():
        e, s = _q(b["epochs_to_target"]), _q(b["seconds_to_target"])
        t, v = b["pick_test"], b["pick_val"]
        ratio = "-" if e[1] is None else f"{e[1] / design:.2f}"
        lines.append(
            f"| {name} | {_f(e[1])} [{_f(e[0])}-{_f(e[2])}] | {ratio} "
            f"| {_f(s[1], 60, 1)} [{_f(s[0], 60, 1)}-{_f(s[2], 60, 1)}] "
            f"| {b['reached']}/{len(b['runs'])} | {within(b['runs'], quarter)}/{len(b['runs'])} "
            f"| {_iqr([best_at(r, quarter) for r in b['runs']])} "
            f"| {t[1]:.3f} [{t[0]:.3f}-{t[2]:.3f}] "
            f"| {v[1]:.3f} [{v[0]:.3f}-{v[2]:.3f}] |")
    return "\n".join(lines)


def within(runs: list[dict[str, Any]], epochs: float) -> int:
    """How many runs reached the target within `epochs`."""
    return sum(r["epochs_to_target"] is not None and r["epochs_to_target"] <= epochs
               for r in runs)


def best_at(run: dict[str, Any], epochs: float) -> float:
    """The best validation Dice a run had found after `epochs` epochs."""
    return max([s[2] for s in run["steps"] if s[0] <= epochs], default=0.0)


def _iqr(xs: list[float]) -> str:
    lo, mid, hi = np.percentile(xs, [25, 50, 75])
    return f"{mid:.3f} [{lo:.3f}-{hi:.3f}]"


def _q(values):
    return [None if v is None or (isinstance(v, float) and math.isinf(v)) else v
            for v in values]


def _f(x, div: float = 1.0, digits: int = 0) -> str:
    return "not reached" if x is None else f"{x / div:.{digits}f}"
