"""`evaluate-folder` equals nnU-Net's folder scorer on hand-made label volumes.

The expected numbers come from `nnunet_compute_metrics` and `nnunet_summary` below: a port of
nnU-Net's `compute_tp_fp_fn_tn`, `compute_metrics` and the means of
`compute_metrics_on_folder` (MIC-DKFZ/nnUNet, nnunetv2/evaluation/evaluate_predictions.py at
commit 0e495086eb108ff79afe106291e8c15bd2f2bc3a), with the file reading left out. The cases
hold what nnU-Net treats specially: a label in neither volume (Dice and IoU NaN, skipped by the
per-label mean), a label in the prediction only (Dice 0), a region (several labels scored as
one, keyed `"(1, 2)"`), and an ignore label (its reference voxels count nowhere, TN included).
bench/nnunet_check.py runs nnU-Net's own code on the same folders.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from search.cli import main


# -- nnU-Net's definitions, ported (see the module docstring) ---------------------------------
def _mask(seg, region_or_label):
    if np.isscalar(region_or_label):
        return seg == region_or_label
    mask = np.zeros_like(seg, dtype=bool)
    for r in region_or_label:
        mask[seg == r] = True
    return mask


def nnunet_compute_metrics(seg_ref, seg_pred, labels_or_regions, ignore_label=None):
    ignore_mask = seg_ref == ignore_label if ignore_label is not None else None
    use_mask = np.ones_like(seg_ref, dtype=bool) if ignore_mask is None else ~ignore_mask
    out = {}
    for r in labels_or_regions:
        mask_ref, mask_pred = _mask(seg_ref, r), _mask(seg_pred, r)
        tp = np.sum((mask_ref & mask_pred) & use_mask)
        fp = np.sum(((~mask_ref) & mask_pred) & use_mask)
        fn = np.sum((mask_ref & (~mask_pred)) & use_mask)
        tn = np.sum(((~mask_ref) & (~mask_pred)) & use_mask)
        m = {}
        if tp + fp + fn == 0:
            m["Dice"] = m["IoU"] = np.nan
        else:
            m["Dice"] = 2 * tp / (2 * tp + fp + fn)
            m["IoU"] = tp / (tp + fp + fn)
        m.update(FP=fp, TP=tp, FN=fn, TN=tn, n_pred=fp + tp, n_ref=fn + tp)
        out[str(r)] = m  # nnU-Net's label_or_region_to_key
    return out


def nnunet_summary(per_case, keys):
    metric_list = list(per_case[0][keys[0]])
    means = {k: {m: np.nanmean([c[k][m] for c in per_case]) for m in metric_list} for k in keys}
    foreground = {m: np.mean([means[k][m] for k in keys if k != "0"]) for m in metric_list}
    return means, foreground


# -- the hand-made cases ----------------------------------------------------------------------
def _cases():
    """(name, reference, prediction) of 4 x 4 x 4 volumes, labels 1-3 and the ignore label 4."""
    r1, p1 = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    r1[0, :, :2] = 1  # 8 voxels of label 1: 4 found, 2 false positives
    p1[0, :2, :2] = 1
    p1[3, 0, :2] = 1
    r1[2, 2, 2] = 2  # label 2: one voxel, predicted as 3
    p1[2, 2, 2] = 3
    r1[1, 3, :] = 3  # label 3: 4 voxels, 3 found
    p1[1, 3, 1:] = 3
    r2, p2 = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    r2[1, 1, :] = 1  # label 1 exact; label 2 in neither (NaN); label 3 predicted only (Dice 0)
    p2[1, 1, :] = 1
    p2[3, 3, 3] = 3
    r3, p3 = r1.copy(), p1.copy()
    r3[3, :, :] = 4  # ignore label: a whole slab, with 2 false positives of label 1 in it
    r3[0, 0, 0] = 4  # and one reference voxel of label 1, found: it must not count as TP
    return [("a.nii.gz", r1, p1), ("b.nii.gz", r2, p2), ("c.nii.gz", r3, p3)]


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for name, r, p in _cases():
        nib.save(nib.Nifti1Image(r, np.eye(4)), ref / name)
        nib.save(nib.Nifti1Image(p, np.eye(4)), pred / name)
    return ref, pred


def _same(ours, theirs):
    """Equal numbers, NaN equal to NaN; integers stay integers."""
    assert ours.keys() == theirs.keys(), (ours.keys(), theirs.keys())
    for key, value in theirs.items():
        got = ours[key]
        if isinstance(value, np.integer):
            assert got == int(value) and isinstance(got, int), (key, got, value)
        elif math.isnan(value):
            assert math.isnan(got), (key, got)
        else:
            assert got == pytest.approx(float(value), rel=1e-12), (key, got, value)


@pytest.mark.parametrize("args, keys, ignore", [
    ([], ["1", "2", "3", "4"], None),  # default: every non-zero id of the references
    (["-l", "1", "2", "3"], ["1", "2", "3"], None),
    (["-l", "1", "2", "3", "-il", "4"], ["1", "2", "3"], 4),
    (["-r", "1,2,3", "2,3", "3", "-l", "1"], ["1", "(1, 2, 3)", "(2, 3)", "(3,)"], None),
    (["-r", "1,2", "-il", "4"], ["(1, 2)"], 4),
])
def test_folder_scores_equal_nnunets(folders, args, keys, ignore):
    ref, pred = folders
    assert main(["evaluate-folder", str(ref), str(pred), *args]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    scored = [int(k) if k.isdigit() else eval(k) for k in keys]  # our own keys
    expected = [nnunet_compute_metrics(r, p, scored, ignore) for _, r, p in _cases()]
    assert len(summary["metric_per_case"]) == 3
    for case, want in zip(summary["metric_per_case"], expected, strict=True):
        assert sorted(case["metrics"]) == sorted(keys)
        for key in keys:
            _same(case["metrics"][key], want[key])
    means, foreground = nnunet_summary(expected, keys)
    for key in keys:
        _same(summary["mean"][key], means[key])
    _same(summary["foreground_mean"], foreground)


def test_hand_counted_values_of_the_special_cases(folders):
    """A few of the numbers above counted by hand, so the port is checked too."""
    ref, pred = folders
    assert main(["evaluate-folder", str(ref), str(pred), "-l", "1", "2", "3", "-il", "4"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    a, b, c = (case["metrics"] for case in summary["metric_per_case"])
    assert a["1"] == {"Dice": 8 / 14, "IoU": 4 / 10, "TP": 4, "FP": 2, "FN": 4, "TN": 54,
                      "n_pred": 6, "n_ref": 8}
    assert math.isnan(b["2"]["Dice"]) and math.isnan(b["2"]["IoU"])  # in neither
    assert (b["3"]["Dice"], b["3"]["FP"], b["3"]["TN"]) == (0.0, 1, 63)  # prediction only
    # Case c: the 16-voxel slab and voxel (0, 0, 0) are ignored: label 1 loses its 2 false
    # positives and one true positive, and TN counts 64 - 17 voxels only.
    assert c["1"] == {"Dice": 6 / 10, "IoU": 3 / 7, "TP": 3, "FP": 0, "FN": 4, "TN": 40,
                      "n_pred": 3, "n_ref": 7}
    assert summary["mean"]["2"]["Dice"] == 0.0  # the NaN of case b skipped
    assert summary["foreground_mean"]["Dice"] == pytest.approx(np.mean([
        np.mean([8 / 14, 1, 6 / 10]), 0.0, np.mean([6 / 8, 0, 6 / 8])]))


@pytest.mark.parametrize("args, message", [
    (["-l", "1", "-il", "1"], "--ignore-label 1: also among the labels or regions scored"),
    (["-r", "1,x"], "argument -r/--regions: '1,x': comma-separated label ids from 1 to 255"),
    (["-r", "2,2"], "argument -r/--regions: '2,2': comma-separated label ids from 1 to 255, "
     "each once"),
])
def test_folder_option_mistakes_are_one_line(folders, capsys, args, message):
    ref, pred = folders
    try:  # a usage mistake leaves through argparse, as SystemExit
        code = main(["evaluate-folder", str(ref), str(pred), *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("segtune: error: ") and message in err, err
    assert err.count("\n") == 1 and not (pred / "summary.json").exists()


def test_a_reference_without_its_prediction_needs_chill(folders, capsys):
    ref, pred = folders
    (pred / "c.nii.gz").unlink()
    assert main(["evaluate-folder", str(ref), str(pred)]) == 2
    assert capsys.readouterr().err == (
        f"segtune: error: {pred}: no prediction for the references c.nii.gz (1 of 3); score "
        "the predicted ones only with --chill (as nnU-Net's)\n")
    assert main(["evaluate-folder", str(ref), str(pred), "--chill"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert [c["prediction_file"] for c in summary["metric_per_case"]] == [
        str(pred / "a.nii.gz"), str(pred / "b.nii.gz")]


def test_every_printed_figure_has_its_spread_over_the_cases(folders, capsys):
    """Dice and HD95 per label: mean, std over the cases (ddof 0) and n, read back from the
    per-case values of summary.json."""
    ref, pred = folders
    assert main(["evaluate-folder", str(ref), str(pred), "-l", "1", "2", "--hd95"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((pred / "summary.json").read_text())
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    assert out.splitlines()[1].split() == ["region", "Dice", "std", "n", "HD95", "mm", "std"]
    for label in ("1", "2"):
        dice = [c["metrics"][label]["Dice"] for c in summary["metric_per_case"]]
        dice = [d for d in dice if not math.isnan(d)]
        hd = [c["metrics"][label]["HD95"] for c in summary["metric_per_case"]]
        assert rows[label] == [label, f"{np.mean(dice):.3f}", f"{np.std(dice):.3f}",
                               str(len(dice)), f"{np.mean(hd):.3f}", f"{np.std(hd):.3f}"]
    assert rows["2"][3] == "2"  # case b has no label 2 on either side: not counted
