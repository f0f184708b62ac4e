"""`python -m search evaluate RUN_DIR`: full-volume predictions of a run's best trial or soup
as NIfTI files in each input's own space and affine, and a `summary.json` in the layout
nnU-Net writes (per case and per region Dice, IoU, TP, FP, FN, TN, n_pred, n_ref, plus HD95;
per-region means; the foreground mean), so results compare with nnU-Net's directly.

Differences from nnU-Net's file, on purpose: regions are keyed by name (`heart`, `WT`) rather
than label id, and HD95 (mm) is added. Dice of a region absent from both prediction and
reference is NaN per case and skipped by the per-region means, as nnU-Net does; the foreground
mean is, as nnU-Net's, a plain mean of the region means: NaN if any region's mean is NaN (a
region absent from every case).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from search.errors import ArgumentError
from search.lazy import LazyModule
from search.predict import load_model, open_run
from search.runfolder import use_every_core
from search.tables import table
from train_fn.files import write_json

metrics = LazyModule("train_fn.metrics")

logger = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")


def evaluate_run(run_dir: str | Path, model: str = "best", split: str = "test",
                 out_dir: str | Path | None = None) -> dict[str, Any]:
    """Predict every case of `split` with `model`; write `predictions/*.nii.gz` and
    `summary.json` into `out_dir` (default `RUN_DIR/eval/<model>-<split>/`). The predictions
    are `search.predict`'s, so `predict` gives the same labels for the same images."""
    import nibabel as nib
    import torch

    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise ArgumentError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    folder = open_run(run_dir)
    spec = folder.spec
    segmenter = load_model(run_dir, model)
    ds = folder.dataset
    cases = ds.subset(folder.split[split])
    out = Path(out_dir) if out_dir else folder.eval_dir(segmenter.name, split)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    use_every_core()

    per_case = []
    for case in cases:
        # Named by case: SegTHOR's labels are all GT.nii.gz, and would overwrite each other.
        pred_file = out / "predictions" / f"{case.case_id}.nii.gz"
        back = torch.as_tensor(segmenter.predict_file(case.image, pred_file))
        reference = nib.load(case.label)
        if tuple(back.shape) != reference.shape:
            raise RuntimeError(f"{case.label}: prediction shape {tuple(back.shape)} after "
                               f"inverting the preprocessing, reference {reference.shape}")
        label = torch.as_tensor(np.asanyarray(reference.dataobj).round().astype(np.uint8))
        zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
        scores = metrics.region_scores(back, label, ds.regions,
                               zooms if spec.train.val_hd95 else None, empty=math.nan)
        voxels = int(np.prod(reference.shape))
        for s in scores.values():
            s["TN"] = voxels - s["TP"] - s["FP"] - s["FN"]
        per_case.append({"reference_file": case.label, "prediction_file": str(pred_file),
                         "metrics": scores})
        logger.info("%s: %s", case.case_id,
                    ", ".join(f"{k} {v['Dice']:.3f}" for k, v in scores.items()))

    summary = summarise(per_case, list(ds.regions))
    summary["segtune"] = {"run_dir": str(run_dir), "model": segmenter.name,
                          "checkpoint": segmenter.checkpoint,
                          "split": split, "cases": [c.case_id for c in cases],
                          "out_dir": str(out)}
    write_json(out / "summary.json", summary)
    return summary


def format_scores(summary: dict[str, Any]) -> str:
    """The per-region means of an `evaluate_run` summary, and the foreground mean."""
    info = summary["segtune"]
    rows = [[region, f"{m['Dice']:.3f}", f"{m['HD95']:.1f}"]
            for region, m in [*summary["mean"].items(),
                              ("foreground", summary["foreground_mean"])]]
    return "\n".join([f"{info['model']} on the {info['split']} split "
                      f"({len(info['cases'])} cases):",
                      *table(["region", "Dice", "HD95 mm"], rows, right=(1, 2))])


def summarise(per_case: list[dict[str, Any]], regions: list[str]) -> dict[str, Any]:
    """nnU-Net's layout: `metric_per_case`, `mean` per region (NaN-skipping), and the
    `foreground_mean` over regions (a plain mean, as nnU-Net's: NaN if a region mean is)."""
    keys = list(per_case[0]["metrics"][regions[0]]) if per_case else []
    mean = {r: {k: _nanmean([c["metrics"][r][k] for c in per_case]) for k in keys}
            for r in regions}
    foreground = {k: _mean([mean[r][k] for r in regions]) for k in keys}
    return {"metric_per_case": per_case, "mean": mean, "foreground_mean": foreground}


def _nanmean(values: list[float]) -> float:
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def _mean(values: list[float]) -> float:
    return sum(float(v) for v in values) / len(values) if values else math.nan

