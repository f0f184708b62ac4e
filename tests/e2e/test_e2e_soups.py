"""Soups of siblings and of averaged weights, from a shared trunk, through the real CLI, Ray
and MLflow: one small search with `search.trunk_epochs`, `soup.siblings` and `train.average`."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli

pytestmark = pytest.mark.e2e


def result_rows(trial_dir) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def test_trunk_siblings_and_averages_fork_and_soup_as_recorded(tmp_path):
    proc = cli("run", "spaces/smoke.yaml", "--storage", str(tmp_path), "--name", "sib",
               "--set", "train.epochs=3", "--set", "soup.siblings=2",
               "--set", "soup.fork_fraction=0.34", "--set", "train.average=swa",
               "--set", "train.average_fraction=1.0", "--set", "lr_finder.enabled=false",
               "--set", "train.val_hd95=false", "--set", "search.trunk_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "sib"
    summary = json.loads((run / "summary.json").read_text())
    best = summary["best"]
    trunk = torch.load(run / "trunk" / "checkpoint.pt", weights_only=True)
    assert trunk["epoch"] == 1
    from search.trunk import fingerprint

    ancestor = {"kind": "trunk", "epochs": 1, "fingerprint": fingerprint(trunk["model"])}
    # Every trial's best checkpoint holds its averaged weights, scored: a soup candidate.
    for t in summary["trials"]:
        state = torch.load(run / t["checkpoint"] / "checkpoint.pt", weights_only=True)
        assert state["averaged"]["count"] == t["best_epoch"]
        assert state["ancestor"] == ancestor  # every trial started from the trunk
        assert t["avg_val_dice"] == pytest.approx(state["averaged"]["metrics"]["val_dice"])
    # The fork point rides in the best trial's checkpoint: its state at epoch 1, whose scores
    # are what the trial reported to Ray at epoch 1.
    ckpt = run / best["checkpoint"]
    fork = torch.load(ckpt / "checkpoint.pt", weights_only=True)["fork"]
    assert fork["epoch"] == 1 and "fork" not in fork
    reported = {r["epoch"]: r for r in result_rows(ckpt.parent)}
    assert fork["metrics"]["val_dice"] == pytest.approx(reported[1]["val_dice"])
    sibs = summary["siblings"]
    assert [s["trial_id"] for s in sibs] == ["sibling1", "sibling2"]
    for s in sibs:
        assert (s["status"], s["fork_of"], s["fork_epoch"]) == ("finished", best["trial_id"], 1)
        state = torch.load(run / s["checkpoint"] / "checkpoint.pt", weights_only=True)
        # Started from the fork: epochs 2 and 3 only, the best trial's initial weights.
        assert [r["epoch"] for r in result_rows((run / s["checkpoint"]).parent)
                if "loss" in r and r["loss"] == r["loss"]] == [2, 3]
        assert state["init_seed"] == 0 and state["config"]["train.seed"] == s["seed"]
        assert state["ancestor"] == ancestor
    assert sibs[0]["seed"] != sibs[1]["seed"]
    uniform = summary["soups"]["uniform"]["ingredients"]
    assert sorted(uniform) == sorted([best["trial_id"], "sibling1", "sibling2"])
    assert summary["reference"]["models"]["ensemble"]["ingredients"] == uniform
    # MLflow: one run per sibling, nested under the search's parent, closed.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sib").experiment_id])
    siblings = [r for r in runs if r.data.tags.get("segtune.kind") == "siblings"]
    assert sorted(r.data.tags["segtune.job"] for r in siblings) == ["sibling1", "sibling2"]
    assert {r.info.status for r in siblings} == {"FINISHED"}
    trunks = [r for r in runs if r.data.tags.get("segtune.kind") == "trunk"]
    assert len(trunks) == 1 and trunks[0].info.status == "FINISHED"
    assert trunks[0].data.metrics["epoch"] == 1
    # A re-soup keeps the siblings as ingredients.
    again = cli("soup", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    resouped = json.loads((run / "summary.json").read_text())
    assert resouped["soups"]["uniform"]["ingredients"] == uniform
    # repeat starts each seed from the trunk, as the trials did; crossval is refused: the trunk
    # trained on the train split, which holds other folds' validation cases.
    rep = cli("repeat", str(run), "--seeds", "1,2")
    assert rep.returncode == 0, rep.stderr[-2000:]
    jobs = json.loads((run / f"repeat-{best['trial_id']}-seeds-1-2" / "results.json")
                      .read_text())["jobs"]
    for job in jobs.values():
        state = torch.load(run / job["checkpoint"] / "checkpoint.pt", weights_only=True)
        assert state["ancestor"] == ancestor
    cv = cli("crossval", str(run), "--folds", "2")
    assert cv.returncode == 2
    assert cv.stderr.strip().splitlines()[-1].endswith(
        "the run's trials start from a trunk trained on its train split, which holds the "
        "validation cases of the other folds; cross-validate a search without "
        "search.trunk_epochs")
