"""Retrain chosen configurations of a finished search: with several seeds (`repeat`) or on k
cross-validation folds (`crossval`, with uniform and greedy soups per fold when several
configurations are retrained).

The jobs run as a Ray Tune grid (in parallel, on a cluster too, retried like trials), each an
MLflow run nested under the search's parent run. Each job trains to the end and is judged by its
final weights (no epoch picked on the data it is scored on). Results are per-region means and
standard deviations over the seeds or folds, in `RUN_DIR/<name>/results.json` and on the
parent run.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import ray

from search import stopping
from search.callbacks import JobCallback
from search.errors import ArgumentError, RunFolderError
from search.runfolder import RunFolder
from search.soup import batchnorm_refresh, soup_pair
from search.stopping import Interrupted
from search.storage import (
    experiment_location,
    is_uri,
    join,
    load_run_checkpoint,
    newest_experiment_state,
    relative,
    unfinished_trials,
)
from search.summary import Summary, TrialRecord
from search.tables import table
from search.trunk import refuse_trunk, saved_trunk
from search.tuner import make_job_tuner
from train_fn.datasets import fold_splits
from train_fn.files import write_json, write_text


def pick_trials(summary: Summary, trial: str | None, top_k: int = 1) -> list[TrialRecord]:
    """The named trial, or the `top_k` best that did not error."""
    ranked = [t for t in summary.trials if t.status != "error" and t.val_dice is not None]
    ranked.sort(key=lambda t: t.val_dice, reverse=True)
    if trial is not None:
        named = [t for t in summary.trials if t.trial_id == trial]
        if not named:
            ids = ", ".join(t.trial_id for t in summary.trials)
            raise ArgumentError(f"--trial {trial}: no such trial in this run (trials: {ids})")
        return named
    if not ranked:
        raise RunFolderError("no trial of this run finished an epoch without erroring")
    return ranked[:top_k]


def _stats(values: list[float]) -> dict[str, float]:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(kept),
            "std": statistics.stdev(kept) if len(kept) > 1 else 0.0, "n": len(kept)}


def aggregate(scores: list[dict[str, float]], prefix: str) -> dict[str, Any]:
    """Mean and standard deviation over jobs of each `prefix/<region>` score, and of the
    mean over regions."""
    # In the order the jobs report them (the dataset's label order), as every other table.
    regions = list(dict.fromkeys(k.split("/", 2)[2] for s in scores for k in s
                                 if k.startswith(prefix + "/")))
    out = {r: _stats([s.get(f"{prefix}/{r}") for s in scores]) for r in regions}
    out["mean"] = _stats([s.get(prefix, _mean([s.get(f"{prefix}/{r}") for r in regions]))
                          for s in scores])
    return out


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


def run_jobs(run_dir: str | Path, kind: str, jobs: dict[str, dict[str, Any]],
             name: str, start: dict[str, Any] | None = None,
             init: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `jobs` as one Ray Tune grid under `RUN_DIR/<name>` (each from the state `start`
    when given, else from the trunk's weights `init`); return each job's record."""
    stopping.tune_env_defaults()
    run_dir = Path(run_dir)
    out = run_dir / name
    # The jobs' experiment goes next to the search's: `<run dir>/<name>` or, on an object
    # store, `<storage>/<run>/<name>`.
    location = experiment_location(run_dir)
    stored = is_uri(location) and newest_experiment_state(join(location, name)) is not None
    if out.exists() or stored:
        where = join(location, name) if stored else out
        raise RunFolderError(f"{where}: exists (these jobs ran already); remove it to run them "
                        "again")
    folder = RunFolder(run_dir)
    spec = folder.spec
    tracker = folder.tracker()
    tuner = make_job_tuner(spec, jobs, folder.data_root, name, location,
                           [JobCallback(tracker, spec, jobs, kind)], start, init)
    if not ray.is_initialized():
        stopping.start_ray()
    status = "FAILED"
    try:
        results = stopping.tune_fit(tuner.fit)
        unfinished = unfinished_trials(join(location, name))
        if unfinished:
            status = "KILLED"
            raise Interrupted(f"{kind} interrupted with {unfinished} job(s) unfinished; to "
                              f"run it again, first remove {join(location, name)}")
        records = {}
        for result in results:
            job = (result.config or {}).get("job")
            metrics = result.metrics or {}
            records[job] = {**{k: v for k, v in jobs[job].items() if k != "split"},
                            "status": "error" if result.error else "finished",
                            "checkpoint": (relative(result.checkpoint.path, location)
                                           if result.checkpoint else None),
                            "scores": {k: v for k, v in metrics.items()
                                       if k.startswith("final/")}}
        status = "FINISHED"
        return records
    except KeyboardInterrupt as err:
        status = "KILLED"
        raise Interrupted(f"{kind} interrupted; to run it again, first remove "
                          f"{join(location, name)}") from err
    finally:
        tracker.close_trials(status)


def repeat(run_dir: str | Path, seeds: list[int], trial: str | None = None) -> dict[str, Any]:
    """Retrain the best (or a named) trial's configuration once per seed; per-region mean and
    standard deviation of the test scores over seeds."""
    out_of_range = [s for s in seeds if not 0 <= s < 2**32]
    if out_of_range:  # numpy, torch and Optuna take 0 .. 2^32 - 1; checked before Ray starts
        raise ArgumentError(f"--seeds {','.join(map(str, seeds))}: seed {out_of_range[0]} is out "
                        f"of range; a seed is an integer from 0 to {2**32 - 1}")
    run_dir = Path(run_dir)
    summary = _summary(run_dir)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ArgumentError(f"--seeds {','.join(map(str, seeds))}: give two or more distinct "
                            "seeds")
    chosen = pick_trials(summary, trial)[0]
    split = RunFolder(run_dir).split
    jobs = {f"seed{s}": {"trial": chosen.trial_id, "config": chosen.config, "seed": s,
                         "split": split} for s in seeds}
    name = f"repeat-{chosen.trial_id}-seeds-{'-'.join(map(str, seeds))}"
    # A run with a trunk: each seed starts from it, as the trial did (its ancestor).
    records = run_jobs(run_dir, "repeat", jobs, name, init=saved_trunk(run_dir))
    scores = [r["scores"] for r in records.values() if r["status"] == "finished"]
    results = {"kind": "repeat", "trial": chosen.trial_id, "config": chosen.config,
               "seeds": seeds, "jobs": records,
               "test_dice": aggregate(scores, "final/test_dice"),
               "test_hd95": aggregate(scores, "final/test_hd95"),
               "val_dice": aggregate(scores, "final/val_dice")}
    return _finish(run_dir, name, results, "test")


def crossval(run_dir: str | Path, folds: int, top_k: int = 1, trial: str | None = None
             ) -> dict[str, Any]:
    """Retrain the `top_k` best configurations (or a named one) on each of `folds` folds of
    the run's train and validation cases; score each fold's models on that fold's validation
    cases (and the held-out test cases); with several configurations, soup them per fold."""
    run_dir = Path(run_dir)
    summary = _summary(run_dir)
    folder = RunFolder(run_dir)
    refuse_trunk(folder.spec, f"crossval {run_dir}")
    # The folds are drawn with the seed the trials' split was (the run's spec), one source.
    splits = fold_splits(folder.split, folds, seed=folder.spec.data.split_seed)
    chosen = pick_trials(summary, trial, top_k)
    jobs = {f"fold{k}-{t.trial_id}": {"trial": t.trial_id, "config": t.config,
                                         "fold": k, "seed": None, "split": splits[k]}
            for k in range(folds) for t in chosen}
    name = f"crossval-{folds}folds-top{len(chosen)}" if trial is None else \
        f"crossval-{folds}folds-{trial}"
    write_json(folder.splits_json, splits)
    records = run_jobs(run_dir, "crossval", jobs, name)
    results: dict[str, Any] = {"kind": "crossval", "folds": folds,
                               "trials": [t.trial_id for t in chosen], "jobs": records}
    best = chosen[0].trial_id
    single = [r["scores"] for r in records.values()
              if r["trial"] == best and r["status"] == "finished"]
    results["val_dice"] = aggregate(single, "final/val_dice")
    results["val_hd95"] = aggregate(single, "final/val_hd95")
    results["test_dice"] = aggregate(single, "final/test_dice")
    if len(chosen) > 1:
        candidates = {k: [(r["trial"], r["scores"]["final/val_dice"],
                           (lambda p=r["checkpoint"]: load_run_checkpoint(run_dir, p)["model"]))
                          for r in records.values() if r["fold"] == k
                          and r["status"] == "finished" and r["checkpoint"]]
                      for k in range(folds)}
        results["soups"] = fold_soups(run_dir, candidates, splits)
    return _finish(run_dir, name, results, "val")


def crossval_every(run_dir: str | Path, top_k: int) -> dict[str, Any]:
    """After a `cv.mode: every` search: the best trial's per-fold validation scores (from its
    checkpoint) and its fold models' test scores, as mean and std over folds; with top_k > 1,
    uniform and greedy soups per fold of the top_k trials that ran every fold."""
    run_dir = Path(run_dir)
    summary = _summary(run_dir)
    folder = RunFolder(run_dir)
    spec = folder.spec
    splits = fold_splits(folder.split, spec.cv.folds, spec.data.split_seed)
    write_json(folder.splits_json, splits)
    full = [t for t in pick_trials(summary, None, len(summary.trials))
            if t.epochs >= spec.cv.folds and t.checkpoint]
    if not full:
        raise RunFolderError(f"{run_dir}: no trial ran every fold")
    chosen = full[:top_k]
    best = load_run_checkpoint(run_dir, chosen[0].checkpoint)
    val = [{f"final/{k}": v for k, v in f["metrics"].items()
            if k.startswith(("val_dice", "val_hd95"))} for f in best["folds"]]
    judge = folder.scorer()
    test_vols = folder.volumes("test")
    test = []
    for fold in best["folds"]:
        mean, dice, hd = judge(fold["model"], test_vols)
        test.append({"final/test_dice": mean,
                     **{f"final/test_dice/{r}": v for r, v in dice.items()},
                     **{f"final/test_hd95/{r}": v for r, v in hd.items()}})
    del best
    results: dict[str, Any] = {
        "kind": "crossval", "mode": "every", "folds": spec.cv.folds,
        "trials": [t.trial_id for t in chosen],
        "val_dice": aggregate(val, "final/val_dice"), "val_hd95": aggregate(val, "final/val_hd95"),
        "test_dice": aggregate(test, "final/test_dice"),
        "test_hd95": aggregate(test, "final/test_hd95")}
    if len(chosen) > 1:
        # Each trial's fold scores, read once (memory-mapped: its weights are not loaded).
        scores = {t.trial_id: [f["metrics"]["val_dice"] for f in load_run_checkpoint(
            run_dir, t.checkpoint, mmap=True)["folds"]] for t in chosen}
        candidates = {k: [(t.trial_id, scores[t.trial_id][k], (
            lambda p=t.checkpoint, k=k: load_run_checkpoint(run_dir, p)["folds"][k]["model"]))
            for t in chosen] for k in range(spec.cv.folds)}
        results["soups"] = fold_soups(run_dir, candidates, splits)
    return _finish(run_dir, "crossval-every", results, "val")


def fold_soups(run_dir: Path, candidates: dict[int, list[tuple[str, float, Any]]],
               splits: list[dict[str, list[str]]]) -> dict[str, Any]:
    """Per fold, the uniform and greedy soups of that fold's candidate models (name, fold
    validation Dice, weight loader; greedy in that order), scored on the fold's validation
    cases; mean and std over folds."""
    folder = RunFolder(run_dir)
    judge = folder.scorer()
    per_kind: dict[str, list[dict[str, float]]] = {"uniform": [], "greedy": []}
    for k, split in enumerate(splits):
        ranked = sorted(candidates.get(k, []), key=lambda c: c[1], reverse=True)
        if len(ranked) < 2:
            continue
        val = folder.volumes(split["val"])
        # The fold's models trained on the fold's training cases: their BatchNorm patches.
        soups = soup_pair([(name, load) for name, _, load in ranked],
                          lambda w, v=val: judge(w, v, hd95=False)[0],
                          batchnorm_refresh(judge, split["train"]))
        for kind, (weights, _, _) in soups.items():
            mean, dice, hd = judge(weights, val)
            per_kind[kind].append({"final/val_dice": mean,
                                   **{f"final/val_dice/{r}": v for r, v in dice.items()},
                                   **{f"final/val_hd95/{r}": v for r, v in hd.items()}})
    return {kind: {"val_dice": aggregate(s, "final/val_dice"),
                   "val_hd95": aggregate(s, "final/val_hd95")}
            for kind, s in per_kind.items() if s}


def _summary(run_dir: Path) -> Summary:
    folder = RunFolder(run_dir)
    _ = folder.info  # refuses a folder without run.json; summary(), one without results
    return folder.summary()


def _finish(run_dir: Path, name: str, results: dict[str, Any], split: str) -> dict[str, Any]:
    """Write results.json and results.md; log the means and stds to the parent run."""

    out = run_dir / name
    out.mkdir(parents=True, exist_ok=True)  # Ray made it, unless its jobs went to a bucket
    write_json(out / "results.json", results)
    table = format_results(results, split)
    write_text(out / "results.md", table + "\n")
    results["table"] = table
    results["files"] = str(out)
    metrics = {}
    for key in ("val_dice", "val_hd95", "test_dice", "test_hd95"):
        for region, s in (results.get(key) or {}).items():
            if not math.isnan(s["mean"]):
                metrics[f"{name}/{key}/{region}/mean"] = s["mean"]
                metrics[f"{name}/{key}/{region}/std"] = s["std"]
    # The store may be offline: the files hold everything.
    RunFolder(run_dir).log_parent(metrics, [out / "results.json", out / "results.md"],
                                  f"results are in {out}")
    return results


def format_results(results: dict[str, Any], split: str) -> str:
    """A Markdown table: per region, mean ± std of Dice (and HD95) over seeds or folds."""
    over = f"{len(results['seeds'])} seeds" if results["kind"] == "repeat" else \
        f"{results['folds']} folds"
    rows = [("single", results)] + [(f"{k} soup", v) for k, v in
                                    (results.get("soups") or {}).items()]
    dice_key, hd_key = f"{split}_dice", f"{split}_hd95"
    regions = [r for r in results[dice_key] if r != "mean"]
    cells = []
    for label, block in rows:
        for metric, key, fmt in (("Dice", dice_key, "{:.3f}"), ("HD95 mm", hd_key, "{:.1f}")):
            stats = block.get(key)
            if stats:
                cells.append([label, metric, *[_pm(stats.get(r), fmt) for r in regions],
                              _pm(stats.get("mean"), fmt)])
    return "\n".join([f"{results['kind']}: mean ± std (n) over {over} ({split} cases)", "",
                      *table(["model", "metric", *regions, "mean"], cells, markdown=True)])


def _pm(s: dict[str, float] | None, fmt: str) -> str:
    if not s or math.isnan(s["mean"]):
        return "-"
    return f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])} ({s['n']})"
