"""CI: check a finished search the way a user would look at it (issue 16's "done when").

    python .ci/check_run.py runs/novograd

- every trial's MLflow `best_val_dice` equals summary.json's `val_dice`;
- the best, uniform and greedy result runs hold summary.json's test Dice per region;
- the plots exist;
- `optuna.load_study` on `optuna.db` returns every trial, with the state its status says;
- `predict` on the test images gives `evaluate`'s predictions voxel for voxel.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from search.spec import load_spec
from train_fn.datasets import open_dataset

run_dir = Path(sys.argv[1]).resolve()
summary = json.loads((run_dir / "summary.json").read_text())
info = json.loads((run_dir / "run.json").read_text())
client = MlflowClient(info["tracking_uri"])
experiment = client.get_experiment_by_name(info["experiment"])
runs = client.search_runs([experiment.experiment_id],
                          filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")

trials = {r.data.tags["ray.trial_id"]: r for r in runs if "ray.trial_id" in r.data.tags}
for trial in summary["trials"]:
    if trial["val_dice"] is not None:
        logged = trials[trial["trial_id"]].data.metrics["best_val_dice"]
        assert math.isclose(logged, trial["val_dice"], rel_tol=1e-9), (trial["trial_id"], logged)
print(f"MLflow best_val_dice = summary.json val_dice for all {len(summary['trials'])} trials")

results = {r.data.tags.get("segtune.soup", "best"): r for r in runs
           if r.data.tags.get("segtune.kind") in ("best", "soup")}
assert set(results) == {"best", "uniform", "greedy"}, sorted(results)
for kind, run in results.items():
    record = summary["best"] if kind == "best" else summary["soups"][kind]
    for region, value in record["test_dice_per_class"].items():
        assert math.isclose(run.data.metrics[f"test_dice/{region}"], value, rel_tol=1e-9)
print("result runs best / uniform / greedy hold the test Dice per region")

plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
assert {"dice_curves.png", "best_vs_compute.png", "greedy_soup.png"} <= set(plots), plots
print("plots:", ", ".join(plots))

study = optuna.load_study(study_name=info["name"], storage=f"sqlite:///{run_dir / 'optuna.db'}")
states = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study.trials}
expected = {"completed": "COMPLETE", "stopped": "PRUNED", "error": "FAIL"}
for trial in summary["trials"]:
    status = trial["status"].split(":")[0]
    assert states[trial["trial_id"]] == expected.get(status, "PRUNED"), (trial, states)
print(f"optuna.db: {len(study.trials)} trials,",
      {s: list(states.values()).count(s) for s in set(states.values())})

split = info["split"]["test"]
with tempfile.TemporaryDirectory() as tmp:
    evaluated = Path(tmp) / "eval"
    predicted = Path(tmp) / "predict"
    subprocess.run([sys.executable, "-m", "search", "evaluate", str(run_dir), "--out",
                    str(evaluated)], check=True, capture_output=True)
    cases = json.loads((evaluated / "summary.json").read_text())["metric_per_case"]
    dataset = open_dataset(load_spec(run_dir / "spec.yaml").data, info["data_root"])
    images = [case.image for case in dataset.subset(split)]
    subprocess.run([sys.executable, "-m", "search", "predict", str(run_dir), "--input", *images,
                    "--output", str(predicted)], check=True, capture_output=True)
    for case in cases:
        ours = nib.load(case["prediction_file"])
        name = Path(case["prediction_file"]).name
        theirs = nib.load(predicted / name)
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj)), name
        assert np.allclose(ours.affine, theirs.affine), name
print(f"predict = evaluate, voxel for voxel, on the {len(split)} test images")
