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
    spread over the cases (std, n: cases where the region is scored), HD95's too, and the
    foreground (each case's mean over regions, then their mean, std and n over cases)."""
    info = evaluation.segtune
    per_case = evaluation.metric_per_case
    hd = "HD95" in evaluation.foreground_mean
    rows = []
    for region in [*evaluation.mean, "foreground"]:
        dice = [_case_mean(c, region, "Dice") for c in per_case]
        row = [region, *_spread(dice)]
        if hd:
            row += _spread([_case_mean(c, region, "HD95") for c in per_case])[:2]
        rows.append(row)
    head = (f"{info['model']} on the {info['split']} split ({len(info['cases'])} cases):"
            if "split" in info else f"{info['pred_dir']} against {info['ref_dir']} "
            f"({len(per_case)} cases):")
    return "\n".join([head, *table(["region", "Dice", "std", "n",
                                    *(["HD95 mm", "std"] if hd else [])],
                                   rows, right=(1, 2, 3, 4, 5) if hd else (1, 2, 3))])


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
                    hd95: bool = False, regions: list[tuple[int, ...]] | None = None,
                    ignore_label: int | None = None, chill: bool = False) -> Evaluation:
    """Score every prediction in `pred_dir` against the reference of the same file name in
    `ref_dir`, as nnU-Net's `compute_metrics_on_folder` (`nnUNetv2_evaluate_simple`) does:
    per case and per label or region Dice, IoU, TP, FP, FN, TN, n_pred, n_ref (and HD95 in mm,
    MONAI's, with `hd95`), the per-label means and the foreground mean, written to `out`
    (default `<pred_dir>/summary.json`). `labels`: label ids, each scored alone, keyed `"1"`
    (default, without `regions`: every non-zero id in the references); `regions`: groups of
    ids scored as one, keyed as nnU-Net keys them, `"(1, 2, 3)"`. Voxels of `ignore_label` in
    a reference count nowhere (not even in TN). A reference without its prediction is refused
    unless `chill`, as nnU-Net's `--chill`."""
    import nibabel as nib

    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    pairs = _folder_pairs(ref_dir, pred_dir, chill)
    loaded = []
    for ref, pred in pairs:
        r, p = nib.load(ref), nib.load(pred)
        if r.shape != p.shape:
            raise ArgumentError(f"{pred}: shape {p.shape}, its reference {ref} {r.shape}")
        loaded.append((ref, pred, np.asanyarray(r.dataobj).round().astype(np.int64),
                       np.asanyarray(p.dataobj).round().astype(np.int64),
                       tuple(float(z) for z in r.header.get_zooms()[:3])))
    scored = _scored(loaded, labels, regions, ignore_label)
    per_case = [{"reference_file": str(ref), "prediction_file": str(pred),
                 "metrics": case_scores(r, p, scored, ignore_label, zooms if hd95 else None)}
                for ref, pred, r, p, zooms in loaded]
    evaluation = summarise(per_case, list(scored))
    evaluation.segtune = {"model": pred_dir.name, "ref_dir": str(ref_dir),
                          "pred_dir": str(pred_dir), "cases": [str(p.name) for _, p in pairs],
                          "ignore_label": ignore_label}
    write_json(Path(out) if out else pred_dir / "summary.json", evaluation.to_json())
    return evaluation


def _scored(loaded: list, labels: list[int] | None, regions: list[tuple[int, ...]] | None,
            ignore_label: int | None) -> dict[str, tuple[int, ...]]:
    """nnU-Net's summary key -> the ids it scores: `"1"` for a label, `"(1, 2)"` for a
    region (`str` of the tuple, as nnU-Net's `label_or_region_to_key`)."""
    if not labels and not regions:
        labels = sorted({int(v) for case in loaded for v in np.unique(case[2])
                         if v and v != ignore_label})
    scored = {str(i): (int(i),) for i in labels or []}
    scored.update({str(tuple(ids)): tuple(ids) for ids in regions or []})
    if ignore_label is not None and any(ignore_label in ids for ids in scored.values()):
        raise ArgumentError(f"--ignore-label {ignore_label}: also among the labels or regions "
                            "scored; its voxels count nowhere, so it cannot be scored")
    if not scored:
        raise ArgumentError("no label to score: the references hold only background; give "
                            "the labels with -l")
    return scored


def case_scores(ref: np.ndarray, pred: np.ndarray, scored: dict[str, tuple[int, ...]],
                ignore_label: int | None = None, spacing: tuple[float, ...] | None = None
                ) -> dict[str, dict[str, float]]:
    """nnU-Net's `compute_metrics` on two label maps: per key TP, FP, FN, TN over the voxels
    not of `ignore_label` in `ref`, Dice 2TP / (2TP + FP + FN) and IoU TP / (TP + FP + FN)
    (NaN where TP + FP + FN is 0: the region in neither), n_pred TP + FP, n_ref TP + FN; HD95
    (mm) with `spacing`."""
    import torch

    counted = int(ref.size)
    if ignore_label is not None:
        # Out of every region on both sides: then they add to no count but TN, taken off.
        ignored = ref == ignore_label
        counted -= int(ignored.sum())
        ref, pred = np.where(ignored, -1, ref), np.where(ignored, -1, pred)
    scores = metrics.region_scores(torch.as_tensor(pred), torch.as_tensor(ref), scored,
                                   spacing, empty=math.nan)
    for score in scores.values():
        score["TN"] = counted - score["TP"] - score["FP"] - score["FN"]
    return scores


def _folder_pairs(ref_dir: Path, pred_dir: Path, chill: bool = False
                  ) -> list[tuple[Path, Path]]:
    """(reference, prediction) files of one name; a prediction without its reference, a
    reference without its prediction (unless `chill`), or an empty folder, is one line."""
    for folder, what in ((ref_dir, "reference"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise ArgumentError(f"{folder}: no such {what} folder")
    preds = _nifti_files(pred_dir)
    if not preds:
        raise ArgumentError(f"{pred_dir}: no predictions (*.nii.gz, *.nii) in this folder")
    missing = [p.name for p in preds if not (ref_dir / p.name).is_file()]
    if missing:
        raise ArgumentError(f"{ref_dir}: no reference of the same name for "
                            f"{_some(missing)} (predictions and references are paired by "
                            "file name)")
    unpredicted = [r.name for r in _nifti_files(ref_dir) if not (pred_dir / r.name).is_file()]
    if unpredicted and not chill:
        raise ArgumentError(f"{pred_dir}: no prediction for the references {_some(unpredicted)}"
                            f" ({len(unpredicted)} of {len(unpredicted) + len(preds)}); score "
                            "the predicted ones only with --chill (as nnU-Net's)")
    return [(ref_dir / p.name, p) for p in preds]


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii"))
                  and not p.name.startswith(".") and p.is_file())


def _some(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


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

