"""The reference a soup must beat, on the held-out test split: the best trial, the greedy and
uniform soups and the prediction ensemble of the soup's candidates (their softmax outputs
averaged, as nnU-Net does with its folds, at K times the inference cost), each scored per test
case and region, with the spread over cases (std) and a bootstrap 95% interval of the mean.

A model is called better than the best trial only when the paired bootstrap interval of its
per-case difference to the best trial lies above 0; otherwise it is reported as not better,
with the difference and its interval.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from search import stopping
from search.lazy import LazyModule
from search.tables import table

if TYPE_CHECKING:
    import torch

metrics = LazyModule("train_fn.metrics")

logger = logging.getLogger(__name__)

RESAMPLES = 2000  # bootstrap resamples: the interval's ends move by < 0.002 Dice between seeds
LEVEL = 0.95
SEED = 0


def bootstrap_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`: `resamples` draws of len(values)
    cases with replacement, the (1-level)/2 and (1+level)/2 quantiles of their means."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std over cases (sample std; 0 for one case), bootstrap 95% interval and n."""
    n = len(values)
    return {"mean": statistics.fmean(values) if n else math.nan,
            "std": statistics.stdev(values) if n > 1 else 0.0,
            "ci95": list(bootstrap_ci(values)), "n": n}


def probabilities(model: torch.nn.Module, image: torch.Tensor, train: Any,
                  device: torch.device) -> torch.Tensor:
    """Softmax (C, X, Y, Z) of one (C, X, Y, Z) image by sliding-window inference, on the CPU."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        logits = sliding_window_inference(image[None].to(device), train.patch_size,
                                          train.sw_batch_size, model, overlap=train.sw_overlap)
    return torch.softmax(logits.float(), dim=1)[0].cpu()


def ensemble_labels(model: torch.nn.Module, members: list[dict[str, torch.Tensor]],
                    image: torch.Tensor, train: Any, device: torch.device) -> torch.Tensor:
    """Label map (1, X, Y, Z) of the averaged softmax of `model` loaded with each of
    `members` in turn (one member: that model's own prediction)."""
    total = None
    for weights in members:
        model.load_state_dict(weights)
        p = probabilities(model, image, train, device)
        total = p if total is None else total.add_(p)
    return total.argmax(0, keepdim=True)


def case_scores(judge, models: dict[str, list[dict[str, torch.Tensor]]],
                volumes: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per model (a list of member weights: one for a single model or a soup, K for an
    ensemble): per region, the Dice of each case; `mean` is each case's mean over regions."""
    regions = judge.folder.dataset.regions
    train = judge.folder.spec.train
    model = judge.model
    model.eval()
    out = {name: {r: [] for r in (*regions, "mean")} for name in models}
    for vol in volumes:
        image, label = metrics._tensors(vol)
        for name, members in models.items():
            stopping.check()
            pred = ensemble_labels(model, members, image, train, judge.device)
            scores = metrics.region_scores(pred, label, regions)
            for r in regions:
                out[name][r].append(scores[r]["Dice"])
            out[name]["mean"].append(statistics.fmean(scores[r]["Dice"] for r in regions))
    return out


def versus_best(per_case: list[float], best: list[float]) -> dict[str, Any]:
    """The paired per-case difference to the best trial: mean, bootstrap 95% interval, and
    whether it is better (the interval above 0)."""
    diff = [a - b for a, b in zip(per_case, best, strict=True)]
    lo, hi = bootstrap_ci(diff)
    delta = statistics.fmean(diff) if diff else math.nan
    return {"delta": delta, "ci95": [lo, hi], "better": bool(lo > 0)}


def reference(judge, volumes: list[dict[str, Any]], case_ids: list[str],
              models: dict[str, list[dict[str, torch.Tensor]]],
              ingredients: dict[str, list[str]]) -> dict[str, Any]:
    """The test-split reference of `models` (name -> member weights; `best` first), as
    summary.json records it: per model its ingredients, per-case mean Dice, per region and
    over regions the mean, std over cases and bootstrap 95% interval, and versus the best."""
    scores = case_scores(judge, models, volumes)
    best = scores["best"]["mean"]
    out: dict[str, Any] = {"split": "test", "cases": case_ids, "resamples": RESAMPLES,
                           "level": LEVEL, "models": {}}
    for name, per_region in scores.items():
        record = {"ingredients": ingredients.get(name, []),
                  "per_case": dict(zip(case_ids, per_region["mean"], strict=True)),
                  "regions": {r: describe(v) for r, v in per_region.items() if r != "mean"},
                  "mean": describe(per_region["mean"])}
        if name != "best":
            record["vs_best"] = versus_best(per_region["mean"], best)
        out["models"][name] = record
    for name, record in out["models"].items():
        if name != "best":
            logger.info("test split: %s %s", name, verdict(record))
    return out


def verdict(record: dict[str, Any]) -> str:
    """`better than the best trial` or `not better than the best trial`, with the paired
    difference of mean Dice and its interval."""
    vs = record["vs_best"]
    lo, hi = vs["ci95"]
    word = "better" if vs["better"] else "not better"
    return (f"{word} than the best trial ({vs['delta']:+.3f} mean Dice, 95% CI "
            f"[{lo:+.3f}, {hi:+.3f}])")


def mlflow_metrics(ref: dict[str, Any]) -> dict[str, float]:
    """The reference as flat MLflow metrics: `reference/<model>/test_dice[/<region>]/<stat>`,
    and `reference/<model>/vs_best/{delta,ci_low,ci_high,better}`."""
    out: dict[str, float] = {}
    for name, record in ref["models"].items():
        blocks = {"": record["mean"], **{f"/{r}": s for r, s in record["regions"].items()}}
        for suffix, s in blocks.items():
            key = f"reference/{name}/test_dice{suffix}"
            out.update({f"{key}/mean": s["mean"], f"{key}/std": s["std"],
                        f"{key}/ci_low": s["ci95"][0], f"{key}/ci_high": s["ci95"][1]})
        if "vs_best" in record:
            vs = record["vs_best"]
            out.update({f"reference/{name}/vs_best/delta": vs["delta"],
                        f"reference/{name}/vs_best/ci_low": vs["ci95"][0],
                        f"reference/{name}/vs_best/ci_high": vs["ci95"][1],
                        f"reference/{name}/vs_best/better": float(vs["better"])})
    return {k: v for k, v in out.items() if not math.isnan(v)}


def format_reference(ref: dict[str, Any]) -> list[str]:
    """Table lines: per model, mean ± std over test cases and the 95% interval, per region and
    over regions, and the verdict against the best trial."""
    models = ref["models"]
    regions = list(next(iter(models.values()))["regions"])
    rows = []
    for name, record in models.items():
        cells = [f"{s['mean']:.3f}±{s['std']:.3f}" for s in
                 (record["regions"][r] for r in regions)]
        m = record["mean"]
        rows.append([name, str(len(record["ingredients"]) or 1), *cells,
                     f"{m['mean']:.3f}±{m['std']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]",
                     "-" if name == "best" else
                     f"{'better' if record['vs_best']['better'] else 'not better'} "
                     f"({record['vs_best']['delta']:+.3f})"])
    n = len(ref["cases"])
    return [f"Test split per case (mean ± std over {n} cases, bootstrap 95% CI of the mean):",
            *table(["model", "size", *[r[:5] for r in regions], "mean [95% CI]", "vs best"],
                   rows)]

