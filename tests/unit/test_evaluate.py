from __future__ import annotations

import pytest
import torch

from search.errors import ArgumentError
from search.evaluate import summarise
from search.predict import load_weights
from train_fn.checkpoint import save_checkpoint


def test_model_file_is_loaded_exactly(tmp_path):
    folder = tmp_path / "models"
    save_checkpoint(folder, {"model": {"w": torch.zeros(2)}})
    torch.save({"model": {"w": torch.ones(2)}}, folder / "mymodel.pt")
    name, path, state = load_weights(tmp_path, str(folder / "mymodel.pt"))
    assert path == folder / "mymodel.pt"
    assert name == "mymodel"
    assert torch.equal(state["model"]["w"], torch.ones(2))
    # The folder, or its checkpoint.pt, still means checkpoint.pt.
    for model in (folder, folder / "checkpoint.pt"):
        name, path, state = load_weights(tmp_path, str(model))
        assert (name, path) == ("models", folder / "checkpoint.pt")
        assert torch.equal(state["model"]["w"], torch.zeros(2))


def test_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "models" / "other.pt"
    with pytest.raises(ArgumentError) as err:
        load_weights(tmp_path, str(missing))
    assert str(err.value) == (f"--model {missing}: not one of best, greedy, uniform and no "
                              f"checkpoint file there ({missing} does not exist)")
    assert "\n" not in str(err.value)


def test_unknown_model_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArgumentError) as err:
        load_weights(tmp_path, "nothing")
    assert str(err.value) == ("--model nothing: not one of best, greedy, uniform and no "
                              "checkpoint file there")


def _case(**dice):
    return {"metrics": {r: {"Dice": d, "HD95": 1.0} for r, d in dice.items()}}


def test_summary_means_follow_nnunet():
    import math

    # "b" is absent from every case: its mean is NaN, and so is the foreground mean (nnU-Net:
    # np.nanmean per region over cases, then np.mean over regions).
    per_case = [_case(a=0.5, b=math.nan, c=0.9), _case(a=math.nan, b=math.nan, c=0.7),
                _case(a=0.7, b=math.nan, c=0.8)]
    summary = summarise(per_case, ["a", "b", "c"])
    assert summary.mean["a"]["Dice"] == pytest.approx(0.6)
    assert math.isnan(summary.mean["b"]["Dice"])
    assert summary.mean["c"]["Dice"] == pytest.approx(0.8)
    assert math.isnan(summary.foreground_mean["Dice"])
    assert summary.foreground_mean["HD95"] == pytest.approx(1.0)
    summary = summarise([{"metrics": {r: c["metrics"][r] for r in "ac"}} for c in per_case],
                        ["a", "c"])
    assert summary.foreground_mean["Dice"] == pytest.approx(0.7)


def _nifti(path, data):
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), np.eye(4)), path)


def test_folder_scores_follow_nnunet_definitions_on_hand_made_cases(tmp_path, capsys):
    """nnU-Net's compute_metrics: TP, FP, FN, TN counted per label; Dice 2TP / (2TP + FP +
    FN), IoU TP / (TP + FP + FN), n_pred TP + FP, n_ref TP + FN; NaN where a label is in
    neither; per-label means skip NaN; the foreground mean is a plain mean of those."""
    import json
    import math

    import numpy as np

    from search.cli import main

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    r1, p1 = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    r1[0, :, :2] = 1  # 8 voxels of label 1
    p1[0, :2, :2] = 1  # 4 of them found ...
    p1[3, 0, :2] = 1  # ... and 2 false positives
    r1[2, 2, 2] = 2  # label 2: one voxel, missed
    r2, p2 = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    r2[1, 1, :] = 1
    p2[1, 1, :] = 1  # label 1 exact; label 2 in neither: NaN
    for name, (r, p) in {"a.nii.gz": (r1, p1), "b.nii.gz": (r2, p2)}.items():
        _nifti(ref / name, r)
        _nifti(pred / name, p)
    assert main(["evaluate-folder", str(ref), str(pred)]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    a = summary["metric_per_case"][0]["metrics"]
    assert a["1"] == {"Dice": 8 / 14, "IoU": 4 / 10, "TP": 4, "FP": 2, "FN": 4, "TN": 54,
                      "n_pred": 6, "n_ref": 8}
    assert (a["2"]["Dice"], a["2"]["FN"], a["2"]["TN"]) == (0.0, 1, 63)
    b = summary["metric_per_case"][1]["metrics"]
    assert b["1"]["Dice"] == 1.0 and math.isnan(b["2"]["Dice"])
    assert summary["mean"]["1"]["Dice"] == pytest.approx((8 / 14 + 1) / 2)
    assert summary["mean"]["2"]["Dice"] == 0.0  # the NaN case skipped
    assert summary["foreground_mean"]["Dice"] == pytest.approx(((8 / 14 + 1) / 2 + 0) / 2)
    out = capsys.readouterr().out
    # The spread over cases: mean, std (ddof 0) and n for every printed figure.
    spread = np.std([8 / 14, 1.0])
    assert f"1           {(8 / 14 + 1) / 2:.3f}  {spread:.3f}  2" in out, out
    assert main(["evaluate-folder", str(ref), str(pred), "-l", "1"]) == 0
    assert set(json.loads((pred / "summary.json").read_text())["mean"]) == {"1"}


def test_folder_scores_refuse_a_prediction_without_its_reference(tmp_path, capsys):
    import numpy as np

    from search.cli import main

    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    _nifti(tmp_path / "pred" / "x.nii.gz", np.zeros((2, 2, 2)))
    assert main(["evaluate-folder", str(tmp_path / "ref"), str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert err == (f"segtune: error: {tmp_path / 'ref'}: no reference of the same name for "
                   "x.nii.gz (predictions and references are paired by file name)\n")
