"""The evaluation protocol on a finished run, through the real CLI: `evaluate` (NIfTI
predictions, nnU-Net-style summary), `repeat` (seeds) and `crossval` (folds, soups per fold)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_e2e import CLASSES, cli

from train_fn.metrics import hd95

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    # Every trial is scored by its mean over 2 folds (cv.mode every), both run to the end.
    proc = cli("run", "spaces/smoke.yaml", "--storage", str(storage),
               "--set", "lr_finder.enabled=false", "--set", "optimizer.lr=0.05",
               "--set", "cv.folds=2", "--set", "cv.mode=every", "--set", "cv.top_k=2",
               "--set", "search.scheduler=fifo", "--set", "tracking.plots=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (storage / "smoke" / "plots").exists()
    return storage, storage / "smoke"


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    denom = p.sum() + r.sum()
    return math.nan if denom == 0 else 2 * (p & r).sum() / denom


def test_evaluate_writes_predictions_whose_scores_match_the_files(run):
    _, run_dir = run
    proc = cli("evaluate", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "eval" / "best-test"
    summary = json.loads((out / "summary.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    assert summary["segtune"]["cases"] == split["test"]
    assert len(summary["metric_per_case"]) == len(split["test"])
    # One file per case, named by it (SegTHOR's labels are all GT.nii.gz).
    assert sorted(Path(c["prediction_file"]).name for c in summary["metric_per_case"]) == \
        sorted(f"{case_id}.nii.gz" for case_id in split["test"])
    assert len(list((out / "predictions").iterdir())) == len(split["test"])
    names = {1: "esophagus", 2: "heart", 3: "trachea", 4: "aorta"}
    for case in summary["metric_per_case"]:
        pred_img = nib.load(case["prediction_file"])
        ref_img = nib.load(case["reference_file"])
        image = nib.load(case["reference_file"].replace("GT.nii.gz", "")
                         + case["reference_file"].split("/")[-2] + ".nii.gz")
        assert pred_img.shape == ref_img.shape
        np.testing.assert_allclose(pred_img.affine, image.affine)
        pred, ref = np.asarray(pred_img.dataobj), np.asarray(ref_img.dataobj)
        assert set(np.unique(pred)) <= {0, 1, 2, 3, 4}
        for label, name in names.items():
            m = case["metrics"][name]
            assert m["TP"] == int(((pred == label) & (ref == label)).sum())
            assert m["n_ref"] == int((ref == label).sum())
            assert m["TP"] + m["FP"] + m["FN"] + m["TN"] == pred.size
            expected = dice(pred, ref, label)
            assert (math.isnan(m["Dice"]) and math.isnan(expected)) or \
                m["Dice"] == pytest.approx(expected)
            zooms = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
            assert m["HD95"] == pytest.approx(hd95(torch.as_tensor(pred == label),
                                                   torch.as_tensor(ref == label), zooms))
    for name in CLASSES:
        per_case = [c["metrics"][name]["Dice"] for c in summary["metric_per_case"]]
        assert summary["mean"][name]["Dice"] == pytest.approx(np.nanmean(per_case))
    # nnU-Net's foreground mean: a plain mean of the region means (NaN if one is NaN).
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        np.mean([summary["mean"][n]["Dice"] for n in CLASSES]), nan_ok=True)
    assert "heart" in proc.stdout and "foreground" in proc.stdout

    trial = json.loads((run_dir / "summary.json").read_text())["trials"][1]
    other = cli("evaluate", str(run_dir), "--model", str(run_dir / trial["checkpoint"]),
                "--split", "val")
    assert other.returncode == 0, other.stderr[-3000:]
    name = (run_dir / trial["checkpoint"]).name
    assert (run_dir / "eval" / f"{name}-val" / "summary.json").is_file()
    missing = cli("evaluate", str(run_dir), "--model", "greedy")
    assert missing.returncode == 2 and "no greedy soup in this run" in missing.stderr
    bad = cli("evaluate", str(run_dir), "--model", "nothing")
    assert bad.returncode == 2
    assert "--model nothing: not one of best, greedy, uniform and no checkpoint file there" \
        in bad.stderr


def test_repeat_retrains_with_each_seed_and_reports_mean_and_std(run):
    from mlflow.tracking import MlflowClient

    storage, run_dir = run
    proc = cli("repeat", str(run_dir), "--seeds", "1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]["trial_id"]
    results = json.loads(
        (run_dir / f"repeat-{best}-seeds-1-2" / "results.json").read_text())
    jobs = results["jobs"]
    assert set(jobs) == {"seed1", "seed2"}
    assert all(j["status"] == "finished" and j["config"] == summary["best"]["config"]
               for j in jobs.values())
    for name in CLASSES:
        values = [jobs[j]["scores"][f"final/test_dice/{name}"] for j in ("seed1", "seed2")]
        stats = results["test_dice"][name]
        assert stats["n"] == 2
        assert stats["mean"] == pytest.approx(statistics.fmean(values))
        assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert "± " in proc.stdout and "2 seeds" in proc.stdout
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`segtune.kind` = 'repeat'")
    assert sorted(r.data.tags["segtune.job"] for r in runs) == ["seed1", "seed2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["train.seed"] for r in runs} == {"1", "2"}
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert f"repeat-{best}-seeds-1-2/test_dice/heart/std" in parent.data.metrics


def test_crossval_trains_each_fold_and_soups_per_fold(run):
    _, run_dir = run
    proc = cli("crossval", str(run_dir), "--folds", "2", "--top-k", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    splits = json.loads((run_dir / "splits.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    assert len(splits) == 2
    assert sorted(splits[0]["val"] + splits[1]["val"]) == sorted(split["train"] + split["val"])
    results = json.loads((run_dir / "crossval-2folds-top2" / "results.json").read_text())
    assert len(results["jobs"]) == 4
    assert {j["fold"] for j in results["jobs"].values()} == {0, 1}
    assert results["val_dice"]["heart"]["n"] == 2
    assert set(results["soups"]) == {"uniform", "greedy"}
    assert results["soups"]["greedy"]["val_dice"]["mean"]["n"] == 2
    assert "2 folds" in proc.stdout and "greedy soup" in proc.stdout


def test_cv_every_scores_each_trial_by_its_mean_over_folds(run):
    from mlflow.tracking import MlflowClient

    storage, run_dir = run
    summary = json.loads((run_dir / "summary.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(splits) == 2
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = {r.data.tags["ray.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id])
        if "ray.trial_id" in r.data.tags and "segtune.kind" not in r.data.tags}
    for trial in summary["trials"]:
        assert trial["status"] == "completed" and trial["epochs"] == 2  # 2 folds
        state = torch.load(run_dir / trial["checkpoint"] / "checkpoint.pt", weights_only=True)
        folds = [f["metrics"]["val_dice"] for f in state["folds"]]
        assert len(folds) == 2 and trial["val_dice"] == pytest.approx(statistics.fmean(folds))
        # Each fold's model differs: they were trained on different cases.
        first, second = (f["model"] for f in state["folds"])
        assert any(not torch.equal(first[k], second[k]) for k in first)
        history = client.get_metric_history(runs[trial["trial_id"]].info.run_id, "val_dice")
        assert [m.step for m in history] == [1, 2]
    cv = summary["crossval"]
    assert cv["mode"] == "every" and cv["folds"] == 2
    assert cv["val_dice"]["mean"]["n"] == 2 and cv["test_dice"]["heart"]["n"] == 2
    assert set(cv["soups"]) == {"uniform", "greedy"}
    assert summary["soups"] is None  # the run's val cases are in the folds' training data
    assert (run_dir / "crossval-every" / "results.md").is_file()
