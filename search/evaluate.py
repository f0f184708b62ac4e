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
from search.summary import Evaluation
from search.tables import table
from train_fn.files import write_json

metrics = LazyModule("train_fn.metrics")

logger = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")


def evaluate_run(run_dir: str | Path, model: str = "best", split: str = "test",
                 out_dir: str | Path | None = None) -> Evaluation:
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

    evaluation = summarise(per_case, list(ds.regions))
    evaluation.segtune = {"run_dir": str(run_dir), "model": segmenter.name,
                          "checkpoint": segmenter.checkpoint,
                          "split": split, "cases": [c.case_id for c in cases],
                          "out_dir": str(out)}
    write_json(out / "summary.json", evaluation.to_json())
    return evaluation


def format_scores(evaluation: Evaluation) -> str:
    """The per-region means of a summary (`evaluate_run`'s or `evaluate_folder`'s) with their
    spread over the cases (std, n: cases where the region is scored), and the foreground
    mean."""
    info = evaluation.segtune
    per_case = evaluation.metric_per_case
    hd = "HD95" in evaluation.foreground_mean
    rows = []
    for region in [*evaluation.mean, "foreground"]:
        dice = [_case_mean(c, region, "Dice") for c in per_case]
        row = [region, *_spread(dice)]
        if hd:
            row += [f"{_spread([_case_mean(c, region, 'HD95') for c in per_case])[0]}"]
        rows.append(row)
    head = (f"{info['model']} on the {info['split']} split ({len(info['cases'])} cases):"
            if "split" in info else f"{info['pred_dir']} against {info['ref_dir']} "
            f"({len(per_case)} cases):")
    return "\n".join([head, *table(["region", "Dice", "std", "n", *(["HD95 mm"] if hd else [])],
                                   rows, right=(1, 2, 3, 4) if hd else (1, 2, 3))])


def _case_mean(case: dict[str, Any], region: str, key: str) -> float:
    """A case's score of `region`, or for `foreground` the plain mean over its regions."""
    scores = case["metrics"]
    if region != "foreground":
        return float(scores[region].get(key, math.nan))
    return _mean([s.get(key, math.nan) for s in scores.values()])


def _spread(values: list[float]) -> list[str]:
    """`mean`, `std` (over the cases, ddof 0), `n` of the values that are numbers."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return ["-", "-", "0"]
    return [f"{np.mean(kept):.3f}", f"{np.std(kept):.3f}", str(len(kept))]


def evaluate_folder(ref_dir: str | Path, pred_dir: str | Path,
                    labels: list[int] | None = None, out: str | Path | None = None,
                    hd95: bool = False) -> Evaluation:
    """Score every prediction in `pred_dir` against the reference of the same file name in
    `ref_dir`, as `nnUNetv2_evaluate_folder` does: per case and per label Dice, IoU, TP, FP,
    FN, TN, n_pred, n_ref (and HD95 in mm, MONAI's, with `hd95`), per-label means and the
    foreground mean, written to `out` (default `<pred_dir>/summary.json`). `labels`: the
    label ids scored, each its own region (default: every non-zero id in the references)."""
    import nibabel as nib
    import torch

    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    pairs = _folder_pairs(ref_dir, pred_dir)
    loaded = []
    for ref, pred in pairs:
        r, p = nib.load(ref), nib.load(pred)
        if r.shape != p.shape:
            raise ArgumentError(f"{pred}: shape {p.shape}, its reference {ref} {r.shape}")
        loaded.append((ref, pred, np.asanyarray(r.dataobj).round().astype(np.int64),
                       np.asanyarray(p.dataobj).round().astype(np.int64),
                       tuple(float(z) for z in r.header.get_zooms()[:3])))
    ids = labels or sorted({int(v) for case in loaded for v in np.unique(case[2]) if v})
    regions = {str(i): (int(i),) for i in ids}
    per_case = []
    for ref, pred, r, p, zooms in loaded:
        scores = metrics.region_scores(torch.as_tensor(p), torch.as_tensor(r), regions,
                                       zooms if hd95 else None, empty=math.nan)
        for score in scores.values():
            score["TN"] = int(r.size) - score["TP"] - score["FP"] - score["FN"]
        per_case.append({"reference_file": str(ref), "prediction_file": str(pred),
                         "metrics": scores})
    evaluation = summarise(per_case, list(regions))
    evaluation.segtune = {"model": pred_dir.name, "ref_dir": str(ref_dir),
                          "pred_dir": str(pred_dir), "cases": [str(p.name) for _, p in pairs]}
    write_json(Path(out) if out else pred_dir / "summary.json", evaluation.to_json())
    return evaluation


def _folder_pairs(ref_dir: Path, pred_dir: Path) -> list[tuple[Path, Path]]:
    """(reference, prediction) files of one name; a prediction without its reference, or an
    empty folder, is one line."""
    for folder, what in ((ref_dir, "reference"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise ArgumentError(f"{folder}: no such {what} folder")
    preds = sorted(p for p in pred_dir.iterdir() if p.name.endswith((".nii.gz", ".nii"))
                   and not p.name.startswith("."))
    if not preds:
        raise ArgumentError(f"{pred_dir}: no predictions (*.nii.gz, *.nii) in this folder")
    missing = [p.name for p in preds if not (ref_dir / p.name).is_file()]
    if missing:
        raise ArgumentError(f"{ref_dir}: no reference of the same name for "
                            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                            "(predictions and references are paired by file name)")
    return [(ref_dir / p.name, p) for p in preds]


def summarise(per_case: list[dict[str, Any]], regions: list[str]) -> Evaluation:
    """nnU-Net's layout: `metric_per_case`, `mean` per region (NaN-skipping), and the
    `foreground_mean` over regions (a plain mean, as nnU-Net's: NaN if a region mean is)."""
    keys = list(per_case[0]["metrics"][regions[0]]) if per_case else []
    mean = {r: {k: _nanmean([c["metrics"][r][k] for c in per_case]) for k in keys}
            for r in regions}
    foreground = {k: _mean([mean[r][k] for r in regions]) for k in keys}
    return Evaluation(metric_per_case=per_case, mean=mean, foreground_mean=foreground)


def _nanmean(values: list[float]) -> float:
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def _mean(values: list[float]) -> float:
    return sum(float(v) for v in values) / len(values) if values else math.nan

