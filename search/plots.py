"""The figures of a finished search: PNG files in `<run dir>/plots/`, also artifacts of the
MLflow parent run under `plots/`.

- `dice_curves.png`: validation Dice per class over epochs, one line per trial (Ray's
  per-epoch results);
- `best_vs_compute.png`: the best validation Dice found so far against the epochs trained
  by all trials together (how search setups are compared);
- `param_importances.png`, `slice.png`: Optuna's own views of the persisted study;
- `greedy_soup.png`: the greedy soup's steps, each candidate accepted or rejected;
- `parallel_coordinates.png`, `history.png`: Optuna's parallel coordinates of the searched
  values and its history of the value by trial (the views optuna-dashboard and W&B open on);
- `test_regions.png`: test Dice per region, the best trial beside the soups.

The LR range test draws its own figure (`lr_finder_plot.png`, `train_fn.lr_finder`). Drawing
is matplotlib's and Optuna's; a figure that cannot be drawn is skipped with a warning, never
failing a search that has finished.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from search.runfolder import RunFolder
from search.study import load_study
from search.summary import Summary

logger = logging.getLogger(__name__)

# Line style by summary.json status: a trial cut short looks cut short.
# A view: its matplotlib figure, or None and the reason it cannot be drawn.
Plot = tuple[Any, str | None]

STYLE = {"completed": "-", "error": ":"}


def histories(results) -> dict[str, Any]:
    """Each trial's per-epoch results (a DataFrame, one row per epoch; an epoch redone after
    a retry or resume counts once, its last report), by trial id, from Ray's `ResultGrid`."""
    out = {}
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or "epoch" not in frame:
            continue
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        out[trial_id] = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return out


def dice_curves(curves: dict[str, Any], status: dict[str, str]) -> Plot:
    """Validation Dice per class (and their mean) over epochs, a line per trial."""
    import matplotlib.pyplot as plt

    columns = sorted({c for frame in curves.values() for c in frame.columns
                      if c.startswith("val_dice/")})
    if not columns:
        return None, "no per-class validation Dice in the trials' results"
    columns.append("val_dice")
    cols = min(3, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for ax, column in zip(axes.flat, columns, strict=False):  # spare axes hidden below
        for trial_id, frame in curves.items():
            if column in frame:
                ax.plot(frame["epoch"], frame[column], marker=".",
                        linestyle=STYLE.get(status.get(trial_id, ""), "--"), label=trial_id)
        ax.set_title("mean over classes" if column == "val_dice" else column.split("/", 1)[1])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel("validation Dice")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small",
               title="trial (-- stopped, : error)")
    fig.suptitle("Validation Dice per class, every trial")
    return fig, None


def best_vs_compute(curves: dict[str, Any], metric: str) -> Plot:
    """Best `metric` so far against cumulative epochs of all trials, in the order the
    epochs ended (Ray's per-report timestamp)."""
    import matplotlib.pyplot as plt

    frames = [f[["timestamp", "epoch", metric]] for f in curves.values() if metric in f]
    if not frames:
        return None, f"no {metric} in the trials' results"
    # Reports of one second tie on the timestamp; epoch order breaks the tie.
    reports = pd.concat(frames).sort_values(["timestamp", "epoch"], kind="stable")
    values = reports[metric].to_numpy(dtype=float)
    spent = np.arange(1, len(values) + 1)
    best = np.fmax.accumulate(np.where(np.isfinite(values), values, -np.inf))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(spent, values, s=12, color="0.6", label="each trial's epoch")
    ax.step(spent, best, where="post", color="C0", label="best so far")
    ax.set_xlabel("epochs trained, all trials together")
    ax.set_ylabel(metric)
    ax.set_title("Best found against compute")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig, None


def param_importances(study) -> Plot:
    """Optuna's parameter importances (its default evaluator) over the COMPLETE trials."""
    from optuna.visualization.matplotlib import plot_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = {p for t in complete for p in t.params}
    if len(complete) < 2 or len(params) < 2:
        return None, (f"importance needs 2 or more completed trials and more than one "
                      f"searched parameter ({len(complete)} completed, {len(params)} "
                      "parameter(s))")
    axes = plot_param_importances(study)
    # How many trials the importances rest on: a handful says little.
    axes.set_title(f"Hyperparameter importances ({len(complete)} completed trials of "
                   f"{len(study.trials)})", loc="left")  # Optuna's own title, replaced
    return _figure(axes), None


def slices(study) -> Plot:
    """Optuna's slice plot: each parameter against the trials' values."""
    from optuna.visualization.matplotlib import plot_slice

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None, "no completed trial"
    axes = plot_slice(study)
    for ax in np.ravel(axes):  # log-scaled lr ticks ran into each other unrotated
        ax.tick_params(axis="x", labelrotation=45, labelsize="small")
    return _figure(axes), None


def greedy_soup(summary: Summary) -> Plot:
    """The greedy soup's steps: the soup's validation Dice with each candidate added, in
    the order tried, accepted or rejected, and the soup's score as it grew."""
    import matplotlib.pyplot as plt

    greedy = (summary.soups or {}).get("greedy")
    steps = greedy.steps if greedy else None
    if not steps:
        return None, "no greedy soup in summary.json"
    x = list(range(len(steps)))
    kept, best = [], None
    for step in steps:
        if step["accepted"]:
            best = step["val_dice"]
        kept.append(best)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(steps) + 2), 4))
    ax.step(x, kept, where="post", color="C0", label="soup so far")
    for accepted, colour, label in ((True, "C2", "accepted"), (False, "C3", "rejected")):
        xs = [i for i in x if steps[i]["accepted"] is accepted]
        if xs:
            ax.scatter(xs, [steps[i]["val_dice"] for i in xs], color=colour, zorder=3,
                       label=label)
    singles = {t.trial_id: t.val_dice for t in summary.trials}
    ax.scatter(x, [singles.get(s["trial_id"]) for s in steps], marker="_", s=200,
               color="0.4", label="candidate alone")
    ax.set_xticks(x, [f"+{s['trial_id']}" if i else s["trial_id"] for i, s in
                      enumerate(steps)], rotation=30, ha="right")
    ax.set_ylabel("validation Dice")
    ax.set_title("Greedy soup: candidates best first, kept if the soup does not drop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig, None


def optuna_view(study, view: str) -> Plot:
    """One of Optuna's matplotlib views (`plot_parallel_coordinate`, ...) of the study."""
    import optuna.visualization.matplotlib as views

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                    optuna.trial.TrialState.PRUNED)):
        return None, "no finished trial"
    return _figure(getattr(views, view)(study)), None


def test_regions(summary: Summary) -> Plot:
    """Grouped bars: test Dice per region (label order) of the best trial and each soup."""
    import matplotlib.pyplot as plt

    best = summary.best
    if not best or not best.test_dice_per_class:
        return None, "no test scores (the search did not finish)"
    models = {f"best trial {best.trial_id}": best.test_dice_per_class}
    models |= {f"{k} soup": v.test_dice_per_class for k, v in (summary.soups or {}).items()}
    regions = list(best.test_dice_per_class)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(regions) + 2), 4))
    width = 0.8 / len(models)
    for i, (label, per) in enumerate(models.items()):
        ax.bar(np.arange(len(regions)) + i * width, [per.get(r, np.nan) for r in regions],
               width, label=label)
    ax.set_xticks(np.arange(len(regions)) + width * (len(models) - 1) / 2, regions)
    ax.set_ylabel("test Dice")
    ax.set_ylim(0, 1)
    ax.set_title("Held-out test split, per region")
    ax.legend(fontsize="small")
    return fig, None


def _figure(axes):
    """The figure of what an Optuna matplotlib plot returns (one Axes or an array of them)."""
    return np.ravel(axes)[0].figure if isinstance(axes, np.ndarray) else axes.figure


def write_plots(run_dir: str | Path, name: str, results, tracker=None) -> list[Path]:
    """Draw every figure the run has data for into `<run_dir>/plots/` and log them to the
    parent run through `tracker`. `results` is the search's `ResultGrid` (None after a
    re-soup: the trials' curves are left as drawn); `name` the study's name. A figure that
    fails or has no data is skipped with a logged reason; nothing here raises. Returns the
    files written."""
    try:
        return _write_plots(Path(run_dir), name, results, tracker)
    except Exception as err:  # noqa: BLE001 - figures must never fail a finished search
        logger.warning("plots: none drawn: %s: %s", type(err).__name__, err)
        return []


def _write_plots(run_dir: Path, name: str, results, tracker) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node; never plt.show()
    import matplotlib.pyplot as plt

    folder = RunFolder(run_dir)
    out = folder.plots
    out.mkdir(exist_ok=True)
    summary = folder.summary()
    status = {t.trial_id: t.status for t in summary.trials}
    figures = {} if results is None else {
        "dice_curves": lambda: dice_curves(curves, status),
        "best_vs_compute": lambda: best_vs_compute(curves, summary.metric),
    }
    figures |= {
        "param_importances": lambda: param_importances(load_study(run_dir, name)),
        "slice": lambda: slices(load_study(run_dir, name)),
        "greedy_soup": lambda: greedy_soup(summary),
        "parallel_coordinates": lambda: optuna_view(load_study(run_dir, name),
                                                    "plot_parallel_coordinate"),
        "history": lambda: optuna_view(load_study(run_dir, name),
                                       "plot_optimization_history"),
        "test_regions": lambda: test_regions(summary),
    }
    written = []
    try:
        curves = histories(results or [])
    except Exception as err:  # noqa: BLE001 - the other figures need no results
        logger.warning("plots: the trials' results could not be read (%s)", err)
        curves = {}
    for stem, draw in figures.items():
        try:
            # Optuna's views switch the global style to ggplot: keep it to their figure.
            with warnings.catch_warnings(), matplotlib.rc_context():
                # Optuna marks its matplotlib views experimental.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # A parameter with one value tried gets a flat axis: matplotlib says so.
                warnings.filterwarnings("ignore", "Attempting to set identical")
                fig, reason = draw()
                if fig is not None:
                    fig.savefig(out / f"{stem}.png", dpi=100, bbox_inches="tight")
            if fig is None:
                logger.info("plots: no %s.png: %s", stem, reason)
                continue
            written.append(out / f"{stem}.png")
        except Exception as err:  # noqa: BLE001 - a figure must never fail a finished search
            logger.warning("plots: %s.png not drawn: %s: %s", stem, type(err).__name__, err)
        finally:
            plt.close("all")
    if tracker is not None and written:
        try:
            tracker.log_parent({}, written, artifact_path="plots")
        except Exception as err:  # noqa: BLE001 - the files are in the run folder
            logger.warning("plots: not logged to MLflow: %s", err)
    logger.info("plots: %s in %s", ", ".join(p.name for p in written) or "none", out)
    return written
