"""The real CLI with `--storage s3://...`: checkpoints and Ray's experiment state in an S3
bucket (moto's server, in-process), segtune's own files in a local run folder."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from helpers import IN_PROCESS, cli_for_trials, cli_process, in_process

pytestmark = pytest.mark.e2e


def cli(*args, env):
    if args[0] in IN_PROCESS:  # no Ray: in this process, in the S3 environment
        return in_process(*args, env=env)
    return cli_for_trials({k: v for k, v in env.items() if k.startswith("AWS_")}, *args)


def keys(bucket, prefix):
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, s3_env):
    """A search with its checkpoints and Ray's experiment state in a bucket, interrupted with
    Ctrl-C once its third trial has reported (a slot came free) and then resumed; every test
    here reads or adds to it: (run folder, environment, the interrupted CLI as
    (exit code, stderr, whether summary.json existed after it), the resumed CLI)."""
    import boto3

    os.environ.update(s3_env)  # for boto3 here; the subprocesses get it explicitly
    boto3.client("s3").create_bucket(Bucket="segtune")
    local = tmp_path_factory.mktemp("local")
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "disabled"}
    args = ["spaces/smoke.yaml", "--storage", "s3://segtune/runs", "--local-dir", str(local),
            "--set", "train.epochs=4", "--set", "search.scheduler=fifo",
            "--set", "search.num_trials=3", "--set", "soup.top_k=3",
            "--set", "lr_finder.enabled=false", "--set", "tracking.plots=false"]
    proc = cli_process("run", *args, env=s3_env)
    seen, started = [], []
    for line in proc.stderr:
        seen.append(line)
        if "search.callbacks: trial " in line and " epoch " in line:  # reported: Ray saved it
            trial_id = line.split("trial ")[1].split()[0]
            if trial_id not in started:
                started.append(trial_id)
            if len(started) == 3:
                break
    proc.send_signal(signal.SIGINT)
    seen.append(proc.stderr.read())
    interrupted = (proc.wait(timeout=300), "".join(seen),
                   (local / "smoke" / "summary.json").exists())
    resumed = cli("run", *args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return local / "smoke", env, interrupted, resumed


def test_checkpoints_go_to_the_bucket_and_results_to_the_local_folder(s3_run):
    run_dir, _, (_, first_stderr, _), _ = s3_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["storage_uri"] == "s3://segtune/runs"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["trials"]) == 3
    stored = keys("segtune", "runs/smoke/")
    for trial in summary["trials"]:
        assert trial["checkpoint"].startswith(f"trial_{trial['trial_id']}/checkpoint_")
        assert f"runs/smoke/{trial['checkpoint']}/checkpoint.pt" in stored
        assert not (run_dir / trial["checkpoint"]).exists()  # nothing of Ray's locally
    assert any(k.startswith("runs/smoke/experiment_state-") for k in stored)
    assert not list(run_dir.glob("experiment_state-*"))
    # The soups were made from the downloaded checkpoints and saved locally.
    for kind in ("uniform", "greedy"):
        assert 0 <= summary["soups"][kind]["test_dice"] <= 1
        assert (run_dir / summary["soups"][kind]["weights"]).is_file()
    assert sorted(summary["soups"]["uniform"]["ingredients"]) == sorted(
        t["trial_id"] for t in summary["trials"])
    best = summary["best"]
    assert best["trial_id"] == summary["trials"][0]["trial_id"]
    assert best["test_dice"] == pytest.approx(sum(best["test_dice_per_class"].values()) / 4)
    assert (run_dir.parent / "mlflow.db").is_file()  # the default MLflow store is local
    assert "checkpoints in s3://segtune/runs/smoke" in first_stderr


def test_evaluate_and_soup_read_checkpoints_from_the_bucket(s3_run):
    run_dir, env, _, _ = s3_run
    proc = cli("evaluate", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "eval" / "best-test" / "summary.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["segtune"]["checkpoint"] == \
        f"s3://segtune/runs/smoke/{summary['best']['checkpoint']}/checkpoint.pt"
    assert len(list((run_dir / "eval" / "best-test" / "predictions").glob("*.nii.gz"))) == \
        len(result["segtune"]["cases"]) > 0
    proc = cli("soup", str(run_dir), "--top-k", "1", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["soups"]["uniform"]["ingredients"] == [summary["best"]["trial_id"]]
    assert summary["soups"]["uniform"]["test_dice"] == pytest.approx(summary["best"]["test_dice"])


def test_crossval_jobs_checkpoint_to_the_bucket(s3_run):
    # One configuration on 2 folds: the jobs' experiment goes to the bucket (souping from
    # downloaded checkpoints is covered by the soup and evaluate test above).
    run_dir, env, _, _ = s3_run
    proc = cli("crossval", str(run_dir), "--folds", "2", "--top-k", "1", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "crossval-2folds-top1" / "results.json").read_text())
    assert len(results["jobs"]) == 2
    stored = keys("segtune", "runs/smoke/crossval-2folds-top1/")
    for job in results["jobs"].values():
        assert job["status"] == "finished"
        assert job["checkpoint"].startswith("crossval-2folds-top1/")
        assert f"runs/smoke/{job['checkpoint']}/checkpoint.pt" in stored
    assert results["val_dice"]["mean"]["n"] == 2 and "2 folds" in proc.stdout


def test_an_interrupted_s3_search_resumes(s3_run):
    run_dir, _, (code, stderr, had_summary), _ = s3_run
    assert code == 130, stderr[-3000:]
    assert f"--storage s3://segtune/runs --local-dir {run_dir.parent} " in stderr
    assert re.search(r"--local-dir \S+ .*--resume", stderr), stderr[-2000:]
    assert not had_summary  # no result before the resume
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["trials"]) == 3
    assert {t["status"] for t in summary["trials"]} == {"completed"}
    stored = keys("segtune", "runs/smoke/")
    for trial in summary["trials"]:
        assert f"runs/smoke/{trial['checkpoint']}/checkpoint.pt" in stored
