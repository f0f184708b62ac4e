from __future__ import annotations

import math

import pytest
import torch

from train_fn.metrics import hd95, miss_penalty, region_scores

BRATS = {"ET": (3,), "TC": (2, 3), "WT": (1, 2, 3)}


def label_map(shape=(8, 8, 8), **boxes) -> torch.Tensor:
    """A (1, X, Y, Z) label map with each `value=(slice, slice, slice)` box filled."""
    out = torch.zeros((1, *shape), dtype=torch.uint8)
    for value, box in boxes.items():
        out[(0, *box)] = int(value[1:])
    return out


def test_counts_dice_and_iou_per_label():
    ref = label_map(v1=(slice(0, 4), slice(0, 4), slice(0, 4)))  # 64 voxels
    pred = label_map(v1=(slice(0, 4), slice(0, 4), slice(0, 2)))  # 32, all inside
    s = region_scores(pred, ref, {"organ": (1,)})["organ"]
    assert (s["TP"], s["FP"], s["FN"], s["n_pred"], s["n_ref"]) == (32, 0, 32, 32, 64)
    assert s["Dice"] == pytest.approx(2 * 32 / (64 + 32))
    assert s["IoU"] == pytest.approx(0.5)


def test_overlapping_regions_score_the_union_of_their_labels():
    # Reference: edema 1 around a core 2 around an enhancing 3; the prediction calls the
    # whole tumour "3": ET is over-segmented, TC too, WT exact.
    ref = label_map(v1=(slice(0, 6),) * 3, v2=(slice(1, 5),) * 3, v3=(slice(2, 4),) * 3)
    pred = label_map(v3=(slice(0, 6),) * 3)
    s = region_scores(pred, ref, BRATS)
    assert s["WT"]["Dice"] == 1.0
    assert s["TC"]["Dice"] == pytest.approx(2 * 64 / (216 + 64))
    assert s["ET"]["Dice"] == pytest.approx(2 * 8 / (216 + 8))


def test_absent_from_both_is_the_stated_convention():
    empty = label_map()
    s = region_scores(empty, empty, {"organ": (1,)}, spacing=(1.0, 1.0, 1.0))["organ"]
    assert s["Dice"] == 1.0 and s["HD95"] == 0.0
    nan = region_scores(empty, empty, {"organ": (1,)}, empty=math.nan)["organ"]
    assert math.isnan(nan["Dice"]) and math.isnan(nan["IoU"])


def test_hd95_is_in_millimetres_with_the_spacing():
    pred = torch.zeros((8, 8, 8), dtype=torch.bool)
    ref = torch.zeros((8, 8, 8), dtype=torch.bool)
    pred[2, 2, 2] = True
    ref[2, 2, 5] = True  # 3 slices apart
    assert hd95(pred, ref, (1.0, 1.0, 2.5)) == pytest.approx(7.5)
    assert hd95(pred, ref, (0.5, 0.5, 1.0)) == pytest.approx(3.0)


def test_a_missed_organ_gets_the_volume_diagonal_never_nothing():
    ref = label_map(v1=(slice(2, 4),) * 3)
    pred = label_map()
    spacing = (1.0, 1.0, 2.5)
    diagonal = math.sqrt(8 ** 2 + 8 ** 2 + 20 ** 2)
    assert miss_penalty((8, 8, 8), spacing) == pytest.approx(diagonal)
    missed = region_scores(pred, ref, {"organ": (1,)}, spacing)["organ"]
    assert missed["HD95"] == pytest.approx(diagonal) and missed["Dice"] == 0.0
    hallucinated = region_scores(ref, pred, {"organ": (1,)}, spacing)["organ"]
    assert hallucinated["HD95"] == pytest.approx(diagonal)
