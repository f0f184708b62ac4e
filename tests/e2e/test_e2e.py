"""The real CLI, Ray and MLflow on spaces/smoke.yaml, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, cli

pytestmark = pytest.mark.e2e
CLASSES = {"esophagus", "heart", "trachea", "aorta"}


def test_run_writes_summary_split_and_soups(smoke_run):
    storage, run_dir, proc = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["trials"]) == 2
    for trial in summary["trials"]:
        assert trial["status"] in {"completed", "stopped"}
        assert set(trial["config"]) == {"optimizer.lr", "layers.early_encoder"}
        assert 0.0 <= trial["val_dice"] <= 1.0
        assert set(trial["val_dice_per_class"]) == CLASSES
        assert (run_dir / trial["checkpoint"] / "checkpoint.pt").is_file()
    best = summary["best"]
    assert best["trial_id"] == summary["trials"][0]["trial_id"]
    assert best["val_dice"] == max(t["val_dice"] for t in summary["trials"])
    assert set(best["test_dice_per_class"]) == CLASSES
    assert best["test_dice"] == pytest.approx(sum(best["test_dice_per_class"].values()) / 4)
    for kind in ("uniform", "greedy"):
        soup = summary["soups"][kind]
        assert set(soup["test_dice_per_class"]) == CLASSES and 0 <= soup["test_dice"] <= 1
        assert soup["ingredients"][0] in {t["trial_id"] for t in summary["trials"]}
        weights = torch.load(run_dir / soup["weights"], weights_only=True)
        assert weights["ingredients"] == soup["ingredients"]
    # The uniform soup averages the top_k (2) trials: both, not one twice.
    assert sorted(summary["soups"]["uniform"]["ingredients"]) == sorted(
        t["trial_id"] for t in summary["trials"])
    assert summary["soups"]["greedy"]["steps"][0]["accepted"] is True
    split = json.loads((run_dir / "split.json").read_text())
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert "val_dice" in proc.stdout and "greedy soup" in proc.stdout
    # The LR range test ran first and centred the searched lr range on its pick.
    finder = json.loads((run_dir / "lr_finder.json").read_text())
    assert (run_dir / "lr_finder_plot.png").is_file()
    saved = (run_dir / "spec.yaml").read_text()
    low, high = finder["lr_used"]["low"], finder["lr_used"]["high"]
    assert high / low == pytest.approx(10)
    assert f"low: {low}" in saved and f"high: {high}" in saved
    assert all(low <= t["config"]["optimizer.lr"] <= high for t in summary["trials"])
    assert f"mlflow ui --backend-store-uri sqlite:///{storage / 'mlflow.db'}" in proc.stdout
    # The end of the run says where everything is, and what to run next.
    home = run_dir.resolve()
    assert f"best checkpoint:  {home / best['checkpoint']}  (trial {best['trial_id']})" \
        in proc.stdout
    assert f"plots:            {home / 'plots'}/" in proc.stdout
    assert f"(optuna-dashboard sqlite:///{home / 'optuna.db'})" in proc.stdout
    assert ("then open http://127.0.0.1:5000/#/experiments/1/runs?workflowType="
            "machine_learning&viewStateShareKey=segtune") in proc.stdout
    assert f"predict:          python -m search predict {home} -i SCANS/ -o SEGMENTATIONS/ " \
           "--model " in proc.stdout
    # The same view's address when the run starts, on stderr.
    assert "search.api: MLflow runs table: mlflow ui --backend-store-uri" in proc.stderr


def test_mlflow_has_parent_and_nested_runs_all_closed(smoke_run):
    from mlflow.tracking import MlflowClient

    storage, run_dir, _ = smoke_run
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    trials = [r for r in children if "ray.trial_id" in r.data.tags]
    results = {r.data.tags.get("segtune.soup", r.data.tags.get("segtune.kind")): r
               for r in children if "ray.trial_id" not in r.data.tags}
    assert len(parents) == 1 and len(trials) == 2
    assert len(children) == 5 and set(results) == {"best", "uniform", "greedy"}
    assert {r.info.status for r in runs} == {"FINISHED"}
    parent = parents[0]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    summary = json.loads((run_dir / "summary.json").read_text())
    by_trial = {r.data.tags["ray.trial_id"]: r for r in trials}
    assert set(by_trial) == {t["trial_id"] for t in summary["trials"]}
    for trial in summary["trials"]:
        run = by_trial[trial["trial_id"]]
        # Every setting under its dotted name; searched ones with the sampled value.
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(
            trial["config"]["optimizer.lr"])
        assert run.data.params["optimizer.beta1"] == "0.95"
        assert run.data.params["train.epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val_dice/heart")
        assert [m.step for m in history] == list(range(1, trial["epochs"] + 1))
        for key in ("loss", "grad_norm", "lr/head", "val_dice/esophagus"):
            assert key in run.data.metrics
        # The best epoch's scores, as summary.json ranks the trial (not the last epoch's).
        assert run.data.metrics["best_val_dice"] == pytest.approx(trial["val_dice"])
        for region, dice in trial["val_dice_per_class"].items():
            assert run.data.metrics[f"best_val_dice/{region}"] == pytest.approx(dice)
        assert run.data.tags["segtune.searched_values"].startswith("optimizer.lr=")
    assert "optimizer.lr" in parent.data.params
    assert parent.data.params["optimizer.lr"].startswith("float ") and \
        parent.data.params["optimizer.lr"].endswith(" log")
    assert parent.data.tags["segtune.best_trial"] == summary["best"]["trial_id"]
    assert results["best"].data.tags["segtune.trial"] == summary["best"]["trial_id"]
    records = {"best": summary["best"], **summary["soups"]}
    for name, run in results.items():
        assert run.data.metrics["test_dice"] == pytest.approx(records[name]["test_dice"])
        assert run.data.metrics["val_dice"] == pytest.approx(records[name]["val_dice"])
        for region, dice in records[name]["test_dice_per_class"].items():
            assert run.data.metrics[f"test_dice/{region}"] == pytest.approx(dice)
    # Each result's model is in MLflow's model view, loads and segments a patch.
    import mlflow
    import mlflow.pytorch

    models = client.search_logged_models([experiment.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(
        r.info.run_id for r in results.values())
    best_model = next(m for m in models if m.source_run_id == results["best"].info.run_id)
    mlflow.set_tracking_uri(f"sqlite:///{storage / 'mlflow.db'}")
    try:
        net = mlflow.pytorch.load_model(f"models:/{best_model.model_id}")
        info = mlflow.models.get_model_info(f"models:/{best_model.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 32, 32, 16))
    assert out.shape == (1, 5, 32, 32, 16)
    assert info.metadata["segtune"]["patch_size"] == [32, 32, 16]
    assert sorted(m.name for m in models) == ["best", "greedy", "uniform"]
    # The model the run recommends, by the registered model named after the run.
    from search.predict import load_model
    from search.summary import Summary

    mlflow.set_tracking_uri(f"sqlite:///{storage / 'mlflow.db'}")
    try:
        champion = mlflow.pytorch.load_model("models:/smoke@champion")
    finally:
        mlflow.set_tracking_uri(None)
    ours = load_model(storage / "smoke", Summary.from_json(summary).recommended(), device="cpu")
    patch = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        assert torch.allclose(champion.eval()(patch), ours.net(patch), atol=1e-6)
    # One version per result of the latest soup (a re-soup's test may have run before).
    assert len(client.search_model_versions("name = 'smoke'")) == 3
    assert info.metadata["segtune"]["preprocessing"]["source"] == "phantom"
    assert parent.data.metrics["soup/greedy/test_dice"] == pytest.approx(
        summary["soups"]["greedy"]["test_dice"])
    assert "best/test_dice/aorta" in parent.data.metrics
    # The test-split reference: per-case spread and interval, on the parent and each result.
    ref = summary["reference"]["models"]
    assert set(ref) == {"best", "uniform", "greedy", "ensemble"}
    assert parent.data.metrics["reference/ensemble/test_dice/mean"] == pytest.approx(
        ref["ensemble"]["mean"]["mean"])
    assert results["greedy"].data.metrics["test_dice_ci_low"] == pytest.approx(
        ref["greedy"]["mean"]["ci95"][0])
    assert "lr_finder/suggestion" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"lr_finder_plot.png", "summary.json", "soup.json"} <= artifacts
    # Next to the sqlite store, not in ./mlruns of the folder the command ran from.
    assert parent.info.artifact_uri.startswith((storage / "mlartifacts" / "smoke").as_uri())
    assert (storage / "mlartifacts" / "smoke").is_dir()


def test_soup_command_and_refusal_to_overwrite(smoke_run):
    storage, run_dir, _ = smoke_run
    proc = cli("soup", str(run_dir), "--top-k", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["soups"]["uniform"]["ingredients"] == [summary["best"]["trial_id"]]
    # The result runs were replaced, not added to.
    client, _, _, _ = runs_by_trial(storage, "smoke")
    results = [r for r in client.search_runs([client.get_experiment_by_name("smoke")
                                              .experiment_id])
               if r.data.tags.get("segtune.kind") in ("best", "soup")]
    assert len(results) == 3
    uniform = next(r for r in results if r.data.tags.get("segtune.soup") == "uniform")
    assert uniform.data.tags["segtune.ingredients"] == summary["best"]["trial_id"]
    assert uniform.data.metrics["test_dice"] == pytest.approx(
        summary["soups"]["uniform"]["test_dice"])
    # The new set replaced the old one at once: the link, the files and the summary agree.
    assert os.readlink(run_dir / "soup") == summary["soup_set"]
    assert [p.name for p in run_dir.glob(".soup-*")] == [summary["soup_set"]]
    assert json.loads((run_dir / "soup" / "soup.json").read_text())["uniform"] == {
        k: v for k, v in summary["soups"]["uniform"].items()}
    assert summary["soups"]["uniform"]["test_dice"] == pytest.approx(summary["best"]["test_dice"])
    again = cli("run", "spaces/smoke.yaml", "--storage", str(storage))
    assert again.returncode == 2
    assert "a run named 'smoke' already exists" in again.stderr

    # kill -9 in the middle of a second soup step: the summary still names a whole set, the
    # one it names is what `soup/` shows once the next step tidied up.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "search", "soup", str(run_dir)], cwd=ROOT,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    for line in proc.stderr:
        if "greedy soup: " in line:
            break
    proc.kill()
    proc.wait(timeout=60)
    after = json.loads((run_dir / "summary.json").read_text())
    assert after == summary
    for kind in ("uniform", "greedy"):
        torch.load(run_dir / after["soups"][kind]["weights"], weights_only=True)
    assert len(list(run_dir.glob(".soup-*"))) == 2  # the half-built one, until the next step
    proc = cli("soup", str(run_dir), "--top-k", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((run_dir / "summary.json").read_text())
    assert [p.name for p in run_dir.glob(".soup-*")] == [final["soup_set"]]
    assert not list(run_dir.rglob(".*.tmp-*"))



def test_a_copied_run_folder_never_writes_into_the_original_store(smoke_run, tmp_path):
    import shutil

    storage, run_dir, _ = smoke_run
    copy = tmp_path / "elsewhere" / "smoke"
    shutil.copytree(run_dir, copy, symlinks=True)
    artifacts = sorted((storage / "mlartifacts").rglob("*"))
    before = {p: p.read_bytes() for p in artifacts if p.is_file()}
    _, _, _, runs = runs_by_trial(storage, "smoke")

    refused = cli("soup", str(copy), "--top-k", "1")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (f"segtune: error: {copy}: this run folder was made at {run_dir.resolve()}, and its "
            "MLflow run") in refused.stderr
    assert f"--tracking-uri sqlite:///{copy.parent / 'mlflow.db'}" in refused.stderr

    own = f"sqlite:///{copy.parent / 'mlflow.db'}"
    proc = cli("soup", str(copy), "--top-k", "1", "--tracking-uri", own)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((copy / "run.json").read_text())
    assert info["tracking_uri"] == own and info["home"] == str(copy.resolve())
    _, parents, _, _ = runs_by_trial(copy.parent, "smoke")
    assert [p.info.run_id for p in parents] == [info["parent_run_id"]]
    assert parents[0].data.tags["segtune.copied_from"] == str(run_dir.resolve())
    assert "soup/uniform/test_dice" in parents[0].data.metrics
    # The original's store and artifacts are as they were.
    assert {p: p.read_bytes() for p in sorted((storage / "mlartifacts").rglob("*"))
            if p.is_file()} == before
    assert len(runs_by_trial(storage, "smoke")[3]) == len(runs)
    again = cli("soup", str(copy), "--top-k", "1")  # now at home: no option needed
    assert again.returncode == 0, again.stderr[-3000:]

def runs_by_trial(storage, experiment):
    """(client, parent runs, trial runs by Ray trial id, the search's runs): the result runs
    of the best trial and the soups are left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("segtune.kind") not in ("best", "soup")]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["ray.trial_id"]: r for r in runs
                if "mlflow.parentRunId" in r.data.tags}
    return client, parents, children, runs


def test_trials_no_node_can_host_are_refused_not_left_pending(tmp_path):
    # Ray Tune would keep them pending forever; the local Ray here has no GPU.
    storage = tmp_path / "runs"
    proc = cli("run", "spaces/smoke.yaml", "--storage", str(storage), "--name", "gpu",
               "--set", "resources.gpu=0.5", "--set", "lr_finder.enabled=false")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.fullmatch(
        r"segtune: error: resources: each trial asks for 1 CPUs \(resources.cpu\) and 0.5 GPUs "
        r"\(resources.gpu\), but no node of the Ray cluster has as many \(1 node\(s\): "
        r"\d+ CPUs, 0 GPUs\): lower them, or start Ray on nodes that have them",
        proc.stderr.strip().splitlines()[-1])
    assert not (storage / "gpu").exists()  # a rerun with the fix may use the same name


def test_resume_refuses_a_changed_spec(tmp_path):
    storage = tmp_path / "runs"
    (storage / "smoke").mkdir(parents=True)
    (storage / "smoke" / "run.json").write_text(json.dumps({"input_spec": {"train.epochs": 9}}))
    # a trial folder: the run had started (one killed before any trial is started again)
    (storage / "smoke" / "trial_00000").mkdir()
    proc = cli("run", "spaces/smoke.yaml", "--storage", str(storage), "--resume")
    assert proc.returncode == 2
    assert "the spec differs from the run's (train.epochs: 9 in the run, 2 now)" in proc.stderr
