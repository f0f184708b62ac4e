"""Segmentation metrics and full-volume evaluation.

Scores are per region: a region is a set of label ids (SegTHOR: one label each; BraTS: ET = {3},
TC = {2, 3}, WT = {1, 2, 3}), so overlapping regions are scored as the union of their labels.

Conventions, stated once:
- Dice of a region absent from both prediction and reference: 1.0 in training and search
  metrics (nothing to find, nothing found); NaN in `evaluate`'s nnU-Net-style summary, whose
  means skip it as nnU-Net's do.
- HD95 in millimetres from the voxel spacing, MONAI's definition
  (`compute_hausdorff_distance(percentile=95)`): the larger of the two directed 95th
  percentiles, prediction edge voxels to the nearest reference edge voxel and back. Not the
  95th percentile of both directions' distances pooled (medpy's `hd95`, usually lower). Both
  empty: 0. One empty (an organ missed, or predicted where there is none): the
  diagonal of the volume in mm, the largest distance possible, never dropped from a mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def region_masks(label_map: torch.Tensor, regions: dict[str, tuple[int, ...]]
                 ) -> dict[str, torch.Tensor]:
    """Boolean (X, Y, Z) mask of each region in a (1, X, Y, Z) or (X, Y, Z) label map."""
    labels = label_map.reshape(label_map.shape[-3:])
    return {name: torch.isin(labels, torch.tensor(ids, device=labels.device))
            for name, ids in regions.items()}


def hd95(pred: torch.Tensor, ref: torch.Tensor, spacing: tuple[float, ...]) -> float:
    """HD95 in mm between two boolean (X, Y, Z) masks, with the penalties above.

    MONAI's definition (`compute_hausdorff_distance(percentile=95)`: the larger of the two
    directed 95th percentiles of distances between the masks' edge voxels, edges being a mask
    minus its erosion), computed on the masks' joint bounding box only and with each
    directed distance taken the cheaper exact way: a KD-tree over one edge set queried on
    all cores, or a distance transform of the box when the query set is most of it."""
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return miss_penalty(ref.shape, spacing)
    p, r = _crop_to_union(pred.cpu().numpy().astype(bool), ref.cpu().numpy().astype(bool))
    edge_p, edge_r = _edges(p), _edges(r)
    scale = np.asarray(spacing, dtype=np.float64)
    return max(_directed_p95(edge_p, edge_r, scale), _directed_p95(edge_r, edge_p, scale))


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union (distances between edge voxels do
    not depend on anything outside it)."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return a[tuple(box)], b[tuple(box)]


def _edges(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a face neighbour outside it (scipy's binary erosion, as MONAI);
    outside the array counts as outside the mask, as in the whole volume (the box holds all
    of the mask)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask)


EXACT_BELOW = 100_000  # edge voxels: fewer are all measured exactly, more are bounded first
BLOCK = 4  # voxels per side of the coarse grid that bounds the distances of many edge voxels


def _directed_p95(src: np.ndarray, dst: np.ndarray, scale: np.ndarray) -> float:
    """The 95th percentile (linear interpolation, as torch.quantile) of the distances (mm)
    from each edge voxel in `src` to the nearest edge voxel in `dst`, exactly.

    Few source voxels: each distance from a KD-tree over `dst`. Many (a scattered early
    prediction): every distance is first bounded to within 2h of a distance transform on a
    grid of BLOCK^3-voxel blocks (h: half a block's diagonal), and only the voxels whose
    bounds can reach the two ranks the percentile needs are measured exactly; the others
    only count as below or above them."""
    from scipy.spatial import cKDTree

    points, targets = np.argwhere(src), np.argwhere(dst)
    n = len(points)
    rank = 0.95 * (n - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    if n <= EXACT_BELOW and len(targets) <= EXACT_BELOW:
        tree = cKDTree(targets * scale, leafsize=32)
        return _percentile95(tree.query(points * scale, k=1, workers=-1)[0])
    coarse = _block_distances(dst, scale)
    blocks = points // BLOCK
    approx = coarse[blocks[:, 0], blocks[:, 1], blocks[:, 2]]
    slack = 2 * 0.5 * float(np.sqrt(np.sum(((BLOCK - 1) * scale) ** 2)))
    lower, upper = approx - slack, approx + slack
    # Every source voxel's nearest target is within its upper bound: the tree needs only
    # the targets that close to the sources' box.
    reach = np.ceil(float(upper.max()) / scale).astype(int)
    near_box = np.all((targets >= points.min(0) - reach) & (targets <= points.max(0) + reach),
                      axis=1)
    tree = cKDTree(targets[near_box] * scale, leafsize=32)
    if n <= EXACT_BELOW:
        return _percentile95(tree.query(points * scale, k=1, workers=-1)[0])
    band_lo = np.partition(lower, lo)[lo]  # <= the true lo-th smallest distance
    band_hi = np.partition(upper, hi)[hi]  # >= the true hi-th smallest distance
    below = int(np.count_nonzero(upper < band_lo))
    near = (upper >= band_lo) & (lower <= band_hi)
    exact = np.sort(tree.query(points[near] * scale, k=1, workers=-1)[0]).astype(np.float32)
    v_lo, v_hi = torch.tensor(exact[lo - below]), torch.tensor(exact[hi - below])
    return float(torch.lerp(v_lo, v_hi, torch.tensor(rank - lo, dtype=torch.float32)))


def _block_distances(dst: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Distance (mm) from each block's centre to the centre of the nearest block holding a
    `dst` voxel, on the grid of BLOCK^3-voxel blocks."""
    from scipy.ndimage import distance_transform_edt

    pad = [(0, -n % BLOCK) for n in dst.shape]
    grid = np.pad(dst, pad)
    shape = [n // BLOCK for n in grid.shape]
    occupied = grid.reshape(shape[0], BLOCK, shape[1], BLOCK, shape[2], BLOCK).any(
        axis=(1, 3, 5))
    return distance_transform_edt(~occupied, sampling=scale * BLOCK)


def _percentile95(distances: np.ndarray) -> float:
    values = torch.from_numpy(distances.astype(np.float32))
    if values.numel() < 2**24:  # torch.quantile's limit; MONAI's own call
        return float(torch.quantile(values, 0.95))
    return float(np.percentile(values.numpy(), 95))


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


# Every combination of flips of the 3 spatial axes of a (N, C, X, Y, Z) batch, as nnU-Net's
# test-time mirroring.
MIRRORS = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def probabilities(model: torch.nn.Module, image: torch.Tensor, roi: tuple[int, int, int],
                  sw_batch_size: int, overlap: float, device: torch.device,
                  mirror: bool = False) -> torch.Tensor:
    """Class probabilities (K, X, Y, Z) of one (C, X, Y, Z) image by sliding-window
    inference; with `mirror`, the mean over the image and its 7 mirrored copies (each
    prediction flipped back). Their argmax is `predict`'s label map without `mirror`."""
    from monai.inferers import sliding_window_inference

    x = image[None].to(device)
    total = None
    for axes in MIRRORS if mirror else MIRRORS[:1]:
        logits = sliding_window_inference(x.flip(axes) if axes else x, roi, sw_batch_size,
                                          model, overlap=overlap)
        prob = torch.softmax(logits.float(), 1)
        prob = prob.flip(axes) if axes else prob
        total = prob if total is None else total + prob
    return (total / (len(MIRRORS) if mirror else 1))[0].cpu()


def _tensors(volume: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image float32, label) tensors of a volume whose arrays may be memory-mapped float16."""
    image, label = volume["image"], volume["label"]
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.asarray(image, dtype=np.float32))
    if not isinstance(label, torch.Tensor):
        label = torch.from_numpy(np.array(label))
    return image.float(), label


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
        image, label = _tensors(v)
        pred = predict(model, image, train.patch_size, train.sw_batch_size,
                       train.sw_overlap, device)
        del image
        scores = region_scores(pred, label, regions, v.get("spacing") if with_hd95 else None)
        for name, s in scores.items():
            dice[name].append(s["Dice"])
            if with_hd95:
                dist[name].append(s["HD95"])
    model.train(was_training)
    per_region = {name: sum(d) / len(d) for name, d in dice.items()}
    per_hd95 = {name: sum(d) / len(d) for name, d in dist.items() if d}
    return sum(per_region.values()) / len(per_region), per_region, per_hd95
