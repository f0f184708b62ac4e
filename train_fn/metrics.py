"""Segmentation metrics and full-volume evaluation.

Scores are per region: a region is a set of label ids (SegTHOR: one label each; BraTS: ET = {3},
TC = {2, 3}, WT = {1, 2, 3}), so overlapping regions are scored as the union of their labels.

Conventions, stated once:
- Dice of a region absent from both prediction and reference: 1.0 in training and search
  metrics (nothing to find, nothing found); NaN in `evaluate`'s nnU-Net-style summary, whose
  means skip it as nnU-Net's do.
- HD95 in millimetres from the voxel spacing (MONAI, 95th percentile of symmetric surface
  distances). Both empty: 0. One empty (an organ missed, or predicted where there is none): the
  diagonal of the volume in mm, the largest distance possible, never dropped from a mean.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch


def region_masks(label_map: torch.Tensor, regions: dict[str, tuple[int, ...]]
                 ) -> dict[str, torch.Tensor]:
    """Boolean (X, Y, Z) mask of each region in a (1, X, Y, Z) or (X, Y, Z) label map."""
    labels = label_map.reshape(label_map.shape[-3:])
    return {name: torch.isin(labels, torch.tensor(ids, device=labels.device))
            for name, ids in regions.items()}


def hd95(pred: torch.Tensor, ref: torch.Tensor, spacing: tuple[float, ...]) -> float:
    """HD95 in mm between two boolean (X, Y, Z) masks, with the penalties above."""
    from monai.metrics import compute_hausdorff_distance

    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return miss_penalty(ref.shape, spacing)
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(pred[None, None].float(), ref[None, None].float(),
                                           include_background=True, percentile=95,
                                           spacing=list(spacing))
    return float(value.reshape(-1)[0])


def miss_penalty(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """The volume's diagonal in mm: the HD95 of a missed or hallucinated region."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape[-3:], spacing, strict=True)))


def region_scores(pred: torch.Tensor, label: torch.Tensor, regions: dict[str, tuple[int, ...]],
                  spacing: tuple[float, ...] | None = None, empty: float = 1.0
                  ) -> dict[str, dict[str, float]]:
    """Per region: Dice, IoU, TP, FP, FN, n_pred, n_ref, and HD95 (when `spacing` is given).
    `empty` is the Dice (and IoU) of a region absent from both."""
    pred_masks, ref_masks = region_masks(pred, regions), region_masks(label, regions)
    out = {}
    for name in regions:
        p, r = pred_masks[name], ref_masks[name]
        tp = int((p & r).sum())
        fp, fn = int(p.sum()) - tp, int(r.sum()) - tp
        denom = 2 * tp + fp + fn
        scores = {"Dice": 2 * tp / denom if denom else empty,
                  "IoU": tp / (tp + fp + fn) if denom else empty,
                  "TP": tp, "FP": fp, "FN": fn, "n_pred": tp + fp, "n_ref": tp + fn}
        if spacing is not None:
            scores["HD95"] = hd95(p, r, spacing)
        out[name] = scores
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor, roi: tuple[int, int, int],
            sw_batch_size: int, overlap: float, device: torch.device) -> torch.Tensor:
    """Label map (1, X, Y, Z) of one (C, X, Y, Z) image by sliding-window inference."""
    from monai.inferers import sliding_window_inference

    logits = sliding_window_inference(
        image[None].to(device), roi, sw_batch_size, model, overlap=overlap
    )
    return logits.argmax(1).cpu()


def evaluate(model: torch.nn.Module, volumes: list[dict[str, Any]], train: Any,
             device: torch.device, regions: dict[str, tuple[int, ...]], with_hd95: bool = True
             ) -> tuple[float, dict[str, float], dict[str, float]]:
    """(mean Dice over regions, Dice per region, HD95 per region in mm), each averaged over
    the cases (HD95 empty when `with_hd95` is off)."""
    was_training = model.training
    model.eval()
    dice: dict[str, list[float]] = {name: [] for name in regions}
    dist: dict[str, list[float]] = {name: [] for name in regions}
    for v in volumes:
        pred = predict(model, v["image"], train.patch_size, train.sw_batch_size,
                       train.sw_overlap, device)
        scores = region_scores(pred, v["label"], regions,
                               v.get("spacing") if with_hd95 else None)
        for name, s in scores.items():
            dice[name].append(s["Dice"])
            if with_hd95:
                dist[name].append(s["HD95"])
    model.train(was_training)
    per_region = {name: sum(d) / len(d) for name, d in dice.items()}
    per_hd95 = {name: sum(d) / len(d) for name, d in dist.items() if d}
    return sum(per_region.values()) / len(per_region), per_region, per_hd95
