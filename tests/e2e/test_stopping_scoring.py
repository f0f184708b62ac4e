"""Ctrl-C during the scoring after the search, then --resume: the real CLI and a real
signal. (Beside test_stopping.py, so that the test workers run its slow searches at once.)"""

from __future__ import annotations

import json
import signal

import pytest
from helpers import cli_process
from test_e2e import cli, runs_by_trial
from test_stopping import wait_for

pytestmark = pytest.mark.e2e


def test_ctrl_c_during_the_post_search_scoring_stops_it_and_resume_finishes(tmp_path):
    storage = tmp_path / "runs"
    # More test cases and 3 soup candidates: the scoring after the search takes seconds.
    args = ["spaces/smoke.yaml", "--name", "scoring", "--set", "data.cases=12",
            "--set", "data.test_fraction=0.5", "--set", "search.num_trials=3",
            "--set", "search.scheduler=fifo", "--set", "soup.top_k=3",
            "--set", "train.epochs=1", "--set", "lr_finder.enabled=false",
            "--set", "tracking.plots=false"]
    proc = cli_process("run", *args, "--storage", str(storage))
    wait_for(proc, "greedy soup: ")
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 130, rest[-3000:]
    assert "Stop signal received" not in rest
    assert ("segtune: search interrupted; the finished trials are kept: continue it with: "
            "python -m search run spaces/smoke.yaml --name scoring") in rest, rest[-2000:]
    run_dir = storage / "scoring"
    assert not (run_dir / "soup").exists()
    summary = json.loads((run_dir / "summary.json").read_text()) if (
        run_dir / "summary.json").exists() else {"best": None}
    assert summary["best"] is None  # no half-done result passes as the run's
    _, parents, _, _ = runs_by_trial(storage, "scoring")
    assert parents[0].info.status == "KILLED"

    again = cli("run", *args, "--storage", str(storage), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["test_dice_per_class"] and summary["soups"]["greedy"]
    _, parents, children, runs = runs_by_trial(storage, "scoring")
    assert len(parents) == 1 and len(children) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
