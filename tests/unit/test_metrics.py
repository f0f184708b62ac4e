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


def monai_hd95(pred: torch.Tensor, ref: torch.Tensor, spacing) -> float:
    """The definition segtune's HD95 keeps: MONAI's whole-volume Hausdorff distance, 95th
    percentile (the implementation segtune used before cropping and bounding)."""
    import warnings

    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(pred[None, None].float(), ref[None, None].float(),
                                           include_background=True, percentile=95,
                                           spacing=list(spacing))
    return float(value.reshape(-1)[0])


def _masks(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (40, 36, 24)
    ref = torch.zeros(shape, dtype=torch.bool)
    pred = torch.zeros(shape, dtype=torch.bool)
    ref[10:22, 8:20, 6:14] = True
    if kind == "shifted":
        pred[12:25, 8:21, 7:15] = True
    elif kind == "at_the_border":  # both touch the volume's faces
        ref[:, :, :] = False
        ref[0:9, 0:12, 0:5] = True
        pred[0:11, 0:10, 0:7] = True
    elif kind == "one_voxel":
        pred[35, 30, 20] = True
    elif kind == "scattered":  # an early prediction: noise all over plus the organ
        pred[:] = torch.rand(shape, generator=g) > 0.7
        pred[11:21, 9:19, 6:13] = True
    elif kind == "thin":  # a thin, broken esophagus-like tube against a full one
        ref[:] = False
        ref[18:21, 16:19, :] = True
        pred[18:21, 17:20, 2:10] = True
        pred[19:22, 16:19, 13:22] = True
    return pred, ref


@pytest.mark.parametrize("bounded", [False, True], ids=["exact", "bounded"])
@pytest.mark.parametrize("kind", ["shifted", "at_the_border", "one_voxel", "scattered",
                                  "thin"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 0.9, 2.5)])
def test_cropped_hd95_equals_monais_whole_volume_hd95(kind, spacing, bounded, monkeypatch):
    import train_fn.metrics as metrics

    if bounded:  # the path taken by >100k edge voxels, here on small masks
        monkeypatch.setattr(metrics, "EXACT_BELOW", 10)
    pred, ref = _masks(kind)
    expected = monai_hd95(pred, ref, spacing)
    assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert hd95(ref, pred, spacing) == pytest.approx(monai_hd95(ref, pred, spacing),
                                                     rel=1e-6, abs=1e-6)


def test_hd95_of_misses_and_of_nothing_keeps_the_conventions():
    pred, ref = _masks("shifted")
    empty = torch.zeros_like(ref)
    spacing = (1.0, 1.0, 2.5)
    assert hd95(empty, ref, spacing) == pytest.approx(miss_penalty(ref.shape, spacing))
    assert hd95(pred, empty, spacing) == pytest.approx(miss_penalty(ref.shape, spacing))
    assert hd95(empty, empty, spacing) == 0.0


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    from pathlib import Path

    import numpy as np
    from scipy.ndimage import binary_erosion

    import train_fn.metrics as metrics

    # A small prediction in the corner of a large reference: the two directions differ a lot.
    ref = torch.zeros((16, 16, 16), dtype=torch.bool)
    ref[2:14, 2:14, 2:14] = True
    pred = torch.zeros_like(ref)
    pred[2:5, 2:5, 2:5] = True
    spacing = (1.0, 1.0, 2.0)

    def edge_points(mask):
        m = mask.numpy()
        return np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing)

    p, r = edge_points(pred), edge_points(ref)
    p_to_r = np.linalg.norm(p[:, None] - r[None], axis=-1).min(axis=1)
    r_to_p = np.linalg.norm(r[:, None] - p[None], axis=-1).min(axis=1)
    directed = max(np.percentile(p_to_r, 95), np.percentile(r_to_p, 95))
    pooled = np.percentile(np.concatenate([p_to_r, r_to_p]), 95)
    assert pooled < directed
    assert hd95(pred, ref, spacing) == pytest.approx(directed, rel=1e-6)

    # ... and where it is documented, it is stated so, not as "symmetric surface distances".
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    evaluation = readme.split("\n### Metrics\n", 1)[1].split("\n#", 1)[0]
    for text in (metrics.__doc__, evaluation):
        flat = " ".join(text.split())
        assert "the larger of the two directed 95th percentiles" in flat
        assert "pooled" in flat
        assert "symmetric surface distances" not in flat


# --- means over several cases, one with an absent region ------------------------------------

def _cases():
    """(prediction, reference) label maps of three cases with BraTS-style overlapping regions:
    case 0 partly right everywhere; case 1 has no ET (3) in prediction or reference; case 2
    has no ET in its reference but predicts some (a false alarm)."""
    rng = torch.Generator().manual_seed(0)

    def noisy(ref, flips):
        pred = ref.clone()
        idx = torch.randperm(ref.numel(), generator=rng)[:flips]
        pred.view(-1)[idx] = torch.randint(0, 4, (flips,), generator=rng, dtype=torch.uint8)
        return pred

    r0 = label_map(v1=(slice(0, 6),) * 3, v2=(slice(1, 5),) * 3, v3=(slice(2, 4),) * 3)
    r1 = label_map(v1=(slice(2, 8),) * 3, v2=(slice(3, 6),) * 3)
    p1 = noisy(r1, 60)
    p1[p1 == 3] = 1
    r2 = label_map(v1=(slice(0, 3),) * 3, v2=(slice(4, 7),) * 3)
    p2 = noisy(r2, 40)
    p2[0, 7, 7, 7] = 3
    return [(noisy(r0, 50), r0), (p1, r1), (p2, r2)]


def _numpy_dice(pred, ref, ids, empty):
    import numpy as np

    p, r = np.isin(pred.numpy(), ids), np.isin(ref.numpy(), ids)
    denom = p.sum() + r.sum()
    return 2 * (p & r).sum() / denom if denom else empty


class _Oracle(torch.nn.Module):
    """A 'network' whose prediction is written in its input: logits one-hot of the image."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].round().long(), 4).permute(0, 4, 1, 2, 3
                                                                              ).float()


def test_validation_means_are_per_case_dice_averaged_over_cases_then_regions():
    import numpy as np

    from search.spec import Spec
    from train_fn.metrics import evaluate

    cases = _cases()
    train = Spec.model_validate({"train": {"patch_size": [8, 8, 8], "sw_batch_size": 1}}).train
    volumes = [{"image": pred.float(), "label": ref, "spacing": (1.0, 1.0, 1.0)}
               for pred, ref in cases]
    mean, per_region, _ = evaluate(_Oracle(), volumes, train, torch.device("cpu"), BRATS,
                                   with_hd95=False)
    # Training's convention: a region absent from both is 1.0 (case 1's ET), a false alarm 0.
    expected = {name: np.mean([_numpy_dice(p, r, ids, 1.0) for p, r in cases])
                for name, ids in BRATS.items()}
    assert [_numpy_dice(p, r, (3,), 1.0) for p, r in cases][1:] == [1.0, 0.0]
    assert per_region == pytest.approx(expected)
    assert mean == pytest.approx(np.mean(list(expected.values())))


def test_nnunet_means_skip_a_region_absent_from_both_in_one_case():
    import numpy as np

    from search.evaluate import summarise

    cases = _cases()
    per_case = [{"metrics": region_scores(p, r, BRATS, empty=math.nan)} for p, r in cases]
    summary = summarise(per_case, list(BRATS))
    dice = {name: [_numpy_dice(p, r, ids, np.nan) for p, r in cases]
            for name, ids in BRATS.items()}
    assert np.isnan(dice["ET"][1]) and dice["ET"][2] == 0.0
    for name in BRATS:  # nnU-Net: np.nanmean over cases per region, np.mean over regions
        assert summary.mean[name]["Dice"] == pytest.approx(np.nanmean(dice[name]))
        tp = [s["metrics"][name]["TP"] for s in per_case]
        assert summary.mean[name]["TP"] == pytest.approx(np.mean(tp))
    assert summary.foreground_mean["Dice"] == pytest.approx(
        np.mean([np.nanmean(d) for d in dice.values()]))
