"""Every option of every subcommand, given an out-of-range or wrong value on a finished run:
one line naming it, exit code 2, never the catch-all line or a traceback, and nothing in
the run's storage changed (issue 30, item 8). Also the mistakes that need a finished run:
a foreign --model file, --device cuda without CUDA, a read-only published run."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, cli, cli_for_trials, fault_env

from search.cli import _parser

pytestmark = pytest.mark.e2e
SMOKE = "spaces/smoke.yaml"

# (command, option or positional): (value, words the one line holds). `{...}` are filled in.
WALK = {
    ("run", "spec"): ("{tmp}/missing.yaml", "no such spec file"),
    ("run", "--set"): ("search.num_trials=1e12", "search.num_trials: Input should be less"),
    ("run", "--name"): ("a/b", "--name 'a/b': a run name is one folder name"),
    ("run", "--storage"): ("{file}", "{file} is a file, not a folder"),
    ("run", "--local-dir"): ("{tmp}/local", "--local-dir {tmp}/local: only with an object"),
    ("run", "--tracking-uri"): ("bogus://x", "bogus://x: not an MLflow tracking URI"),
    ("run", "--address"): ("127.0.0.1:70000", "argument --address: '127.0.0.1:70000'"),
    ("lr-find", "spec"): ("{tmp}/missing.yaml", "no such spec file"),
    ("lr-find", "--set"): ("lr_finder.num_iter=1000000000", "lr_finder.num_iter"),
    ("lr-find", "--out"): ("{file}", "--out {file}: {file} is a file, not a folder"),
    ("soup", "run_dir"): ("{tmp}", "segtune run folder"),
    ("soup", "--top-k"): ("-5", "argument --top-k: '-5': an integer from 1 to 1000"),
    ("soup", "--tracking-uri"): ("file:///x", "file:///x: not an MLflow tracking URI"),
    ("evaluate", "run_dir"): ("{tmp}", "segtune run folder"),
    ("evaluate", "--model"): ("{tmp}/list.pt", "is not a segtune checkpoint (a dict with "
                              "'model' weights); it holds list"),
    ("evaluate", "--split"): ("bogus", "--split bogus: choose one of test, val, train"),
    ("evaluate", "--out"): ("{file}", "--out {file}: {file} is a file, not a folder"),
    ("predict", "run_dir"): ("{tmp}", "segtune run folder"),
    ("predict", "--input"): ("{tmp}/missing.nii.gz", "--input {tmp}/missing.nii.gz: no such"),
    ("predict", "--output"): ("{file}", "--output {file}: a file, not a folder"),
    ("predict", "--model"): ("{tmp}/evil.pt", "{tmp}/evil.pt is not a segtune checkpoint "
                             "(torch.load(weights_only=True) refused it: UnpicklingError"),
    ("predict", "--device"): ("tpu", "argument --device: invalid choice: 'tpu'"),
    ("repeat", "run_dir"): ("{tmp}", "segtune run folder"),
    ("repeat", "--seeds"): ("1,-2", "--seeds 1,-2: seed -2 is out of range"),
    ("repeat", "--trial"): ("nosuch", "--trial nosuch: no such trial in this run"),
    ("repeat", "--tracking-uri"): ("bogus://x", "bogus://x: not an MLflow tracking URI"),
    ("crossval", "run_dir"): ("{tmp}", "segtune run folder"),
    ("crossval", "--folds"): ("1", "argument --folds: '1': an integer from 2 to 100"),
    ("crossval", "--top-k"): ("-3", "argument --top-k: '-3': an integer from 1 to 100"),
    ("crossval", "--trial"): ("nosuch", "--trial nosuch: no such trial in this run"),
    ("crossval", "--tracking-uri"): ("bogus://x", "bogus://x: not an MLflow tracking URI"),
    ("run", "--warm-start"): ("{tmp}", "--warm-start {tmp}: not a segtune run folder"),
    ("run", "--warm-start-best"): ("-1", "argument --warm-start-best: '-1': an integer from 0"),
    ("predict", "--overlap"): ("1.5", "--overlap 1.5: the sliding windows' overlap is a fraction"),
    ("evaluate-folder", "ref_dir"): ("{tmp}/missing", "{tmp}/missing: no such reference folder"),
    ("evaluate-folder", "pred_dir"): ("{tmp}/missing", "{tmp}/missing: no such prediction "
                                      "folder"),
    ("evaluate-folder", "-l"): ("0", "argument -l/--labels: '0': an integer from 1 to 255"),
    ("evaluate-folder", "-r"): ("1,x", "argument -r/--regions: '1,x': comma-separated label "
                                "ids from 1 to 255"),
    ("evaluate-folder", "-il"): ("0", "argument -il/--ignore-label: '0': an integer from 1 to "
                                 "255"),
    ("evaluate-folder", "-o"): ("{tmp}", "-o {tmp}: a folder; give the summary.json file"),
    ("compare", "run_dir"): ("{tmp}", "segtune run folder"),
    ("compare", "--baseline"): ("{tmp}/missing.csv", "--baseline {tmp}/missing.csv: no such"),
    ("compare", "--model"): ("bogus", "--model bogus: not one of best, greedy, uniform and no "
                                "checkpoint file there"),
    ("compare", "--split"): ("bogus", "not 'bogus'"),
    ("compare", "--baseline-model"): ("bogus", "argument --baseline-model: invalid choice"),
    ("compare", "--tracking-uri"): ("bogus://x", "bogus://x: not an MLflow tracking URI"),
}


def _valued_options() -> set[tuple[str, str]]:
    """(subcommand, option) of every option and positional that takes a value."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = set()
    for command, child in sub.choices.items():
        for action in child._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            out.add((command, action.option_strings[0] if action.option_strings
                     else action.dest))
    return out


def test_the_walk_names_every_option_of_every_subcommand():
    assert _valued_options() == set(WALK)


def _args(command: str, option: str, value: str, run_dir, image, tmp_path) -> list[str]:
    """A valid call of `command` on the finished run, with `option` set to `value`."""
    first = {"run": SMOKE, "lr-find": SMOKE}.get(command, str(run_dir))
    needed = {"predict": {"--input": str(image), "--output": str(tmp_path / "out")},
              "repeat": {"--seeds": "1,2"}, "compare": {"--baseline": str(run_dir)},
              "run": {"--storage": str(tmp_path / "runs"), "--name": "walk"}}.get(command, {})
    if command == "evaluate-folder":  # two folders holding one label map each
        folders = {}
        for name in ("ref_dir", "pred_dir"):
            folders[name] = tmp_path / name
            folders[name].mkdir(exist_ok=True)
            shutil.copy(Path(image).parent / "GT.nii.gz", folders[name] / "case.nii.gz")
        if option in folders:
            folders[option] = value
        rest = [] if option in folders else [option, value]
        return [command, str(folders["ref_dir"]), str(folders["pred_dir"]), *rest]
    if option in ("spec", "run_dir"):
        first = value
    else:
        needed = {**needed, option: value}
    return [command, first, *[x for kv in needed.items() for x in kv]]


def _snapshot(folder) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def foreign_models(tmp_path_factory):
    """A checkpoint file holding a list, and a pickle that would run a command if loaded."""
    folder = tmp_path_factory.mktemp("models")
    torch.save([1, 2, 3], folder / "list.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {folder}/pwned",))

    (folder / "evil.pt").write_bytes(pickle.dumps(Evil()))
    return folder


@pytest.mark.parametrize("command, option", sorted(WALK))
def test_every_option_with_a_wrong_value_is_one_line_and_exit_2(
        smoke_run, tmp_path, foreign_models, command, option):
    storage, run_dir, _ = smoke_run
    for name in ("list.pt", "evil.pt"):
        (tmp_path / name).write_bytes((foreign_models / name).read_bytes())
    (tmp_path / "a-file").write_text("x")
    fill = {"tmp": tmp_path, "file": tmp_path / "a-file"}
    value, said = (w.format(**fill) for w in WALK[command, option])
    run = json.loads((run_dir / "run.json").read_text())
    case = run["split"]["test"][0]
    image = f"{run['data_root']}/train/{case}/{case}.nii.gz"
    before = _snapshot(storage)
    proc = cli(*_args(command, option, value, run_dir, image, tmp_path))
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("segtune:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("segtune: error: "), proc.stderr[-2000:]
    assert said in lines[0], lines[0]
    assert "rerun with --debug" not in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(storage) == before
    assert not (tmp_path / "runs").exists() and not (foreign_models / "pwned").exists()


def test_device_cuda_without_cuda_is_one_line(smoke_run, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, run_dir, _ = smoke_run
    run = json.loads((run_dir / "run.json").read_text())
    case = run["split"]["test"][0]
    proc = cli("predict", str(run_dir), "-i", f"{run['data_root']}/train/{case}/{case}.nii.gz",
               "-o", str(tmp_path / "out"), "--device", "cuda")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("segtune: error: --device cuda: no CUDA device on this machine"), last
    assert last.endswith("; use --device cpu or auto"), last
    assert not (tmp_path / "out").exists()


def _read_only_copy(storage, tmp_path):
    """A read-only (bind-mounted) view of the finished run's storage, or a skip."""
    view = tmp_path / "published"
    view.mkdir()
    made = subprocess.run(["mount", "--bind", str(storage), str(view)], capture_output=True)
    if made.returncode:
        pytest.skip("cannot bind-mount here")
    ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
    if ro.returncode:
        subprocess.run(["umount", str(view)])
        pytest.skip("cannot remount read-only here")
    return view


def test_a_read_only_published_run_predicts_and_evaluates_to_out(smoke_run, tmp_path):
    """predict, and evaluate with --out, need not write into the run; soup does, and says so
    in one line (exit 2) instead of failing on the lock file."""
    storage, run_dir, _ = smoke_run
    view = _read_only_copy(storage, tmp_path)
    try:
        run = json.loads((run_dir / "run.json").read_text())
        case = run["split"]["test"][0]
        image = f"{run['data_root']}/train/{case}/{case}.nii.gz"
        published = view / run_dir.name
        proc = cli("predict", str(published), "-i", image, "-o", str(tmp_path / "pred"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / "pred" / f"{case}.nii.gz").is_file()
        proc = cli("evaluate", str(published), "--out", str(tmp_path / "eval"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / "eval" / "summary.json").is_file()
        proc = cli("soup", str(published))
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"segtune: error: {view}: cannot write in it (read-only file system), so "
            f".{run_dir.name}.lock cannot be made")
    finally:
        subprocess.run(["umount", str(view)])


def test_a_full_cache_disk_is_one_line_and_leaves_no_run(tmp_path):
    """The cache written to a full file system (a 300 KiB tmpfs): one line naming the cache
    folder, exit 2, no half entry and no run folder."""
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = cli("run", SMOKE, "--storage", str(tmp_path / "runs"),
                   "--set", f"data.cache_dir={disk}/cache")
        assert proc.returncode == 2, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"segtune: error: data.cache_dir {disk}/cache: cannot write "
                               "the cache entry Patient_"), last
        assert "free space there, set data.cache_dir to another folder" in last
        assert list((disk / "cache").iterdir()) == []
        assert not (tmp_path / "runs" / "smoke").exists()
    finally:
        subprocess.run(["umount", str(disk)])


def _foreign_study(path, name):
    import optuna

    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}")
    trial = study.ask()
    trial.set_user_attr("ray_trial_id", "0ther000")
    study.tell(trial, 0.5)


@pytest.mark.parametrize("damage, said", [
    ("removed", "optuna.db: missing, so the sampler cannot be given the 2 trial(s) Ray saved"),
    ("another run's", "optuna.db: the study does not hold 2 of the 2 trial(s) Ray saved ("),
    ("another name", "optuna.db: holds no study named 'smoke' (another run's study?)"),
    ("not a study", "optuna.db: not a readable Optuna study (DatabaseError)"),
])
def test_a_lost_or_foreign_study_is_refused_before_ray_starts(smoke_run, tmp_path, damage,
                                                               said):
    """--resume with the run's optuna.db removed, replaced by another run's study (of the
    same name, or another), or by a file that is no study: one line naming it, exit 2, before
    Ray starts, and Ray's saved experiment state left as it was (issue 30, item 3)."""
    import shutil

    _, run_dir, _ = smoke_run
    copy = tmp_path / "runs" / "smoke"
    shutil.copytree(run_dir, copy, symlinks=True)
    db = copy / "optuna.db"
    db.unlink()
    if damage == "another run's":
        _foreign_study(db, "smoke")
    elif damage == "another name":
        _foreign_study(db, "other")
    elif damage == "not a study":
        db.write_bytes(b"not sqlite" * 100)
    before = _snapshot(copy)
    proc = cli("run", SMOKE, "--storage", str(tmp_path / "runs"), "--resume")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("segtune:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"segtune: error: {db}"), lines
    assert said in lines[0] and lines[0].endswith(
        "put its own optuna.db back, or start the search again under another --name")
    assert "Ray:" not in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(copy) == before


def _ray_state(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name.startswith(
        ("experiment_state-", "searcher-state-", "search_gen_state-", "tuner.pkl"))}


def test_a_failed_restore_puts_the_experiment_state_back(smoke_run, tmp_path):
    """--resume where Ray cannot restore its searcher (the saved searcher state damaged): Ray
    would start the experiment over and save a new, empty state over the trials'; the saved
    state is put back byte for byte, and the run ends in one line, exit 2 (issue 30, item 3)."""
    import shutil

    _, run_dir, _ = smoke_run
    copy = tmp_path / "runs" / "smoke"
    shutil.copytree(run_dir, copy, symlinks=True)
    (searcher,) = copy.glob("searcher-state-*.pkl")
    searcher.write_bytes(b"not a pickle" * 10)
    before, trials = _ray_state(copy), sorted(p.name for p in copy.glob("trial_*"))
    proc = cli("run", SMOKE, "--storage", str(tmp_path / "runs"), "--resume",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("segtune:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and re.fullmatch(
        rf"segtune: error: {re.escape(str(copy))}: Ray could not restore the search \(\w+: "
        r".*\); its saved state is put back as it was: rerun with --debug for Ray's traceback",
        lines[0]), lines
    assert "Traceback" not in proc.stderr and "Failed to restore" not in proc.stderr
    assert _ray_state(copy) == before  # no new, empty state beside it
    assert sorted(p.name for p in copy.glob("trial_*")) == trials
    assert not (copy / ".ray-state-before-resume").exists()


KILLED_AFTER_SWITCH = """
import os, signal, sys
from search import api, soup

switch = soup.switch_soups

def switch_then_die(*args, **kwargs):
    switch(*args, **kwargs)  # summary.json and the soup files now name the new set
    os.kill(os.getpid(), signal.SIGKILL)

soup.switch_soups = switch_then_die
api.soup_run(sys.argv[1], int(sys.argv[2]))
"""


def _result_runs(uri: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_run(parent).info.experiment_id
    return [r for r in client.search_runs([experiment],
                                          filter_string=f"tags.`mlflow.parentRunId` = "
                                                        f"'{parent}'")
            if r.data.tags.get("segtune.kind") in ("best", "soup")]


def _agree(uri: str, parent: str, summary: dict) -> list:
    """The result runs of the set summary.json names, checked against it: one per model,
    FINISHED, each soup's size and test Dice as summary.json has them."""
    runs = [r for r in _result_runs(uri, parent)
            if r.data.tags.get("segtune.result_set") == summary["result_set"]]
    by_name = {r.data.tags.get("segtune.soup", "best"): r for r in runs}
    assert sorted(by_name) == ["best", "greedy", "uniform"] and len(runs) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    for kind, record in summary["soups"].items():
        assert by_name[kind].data.metrics["size"] == len(record["ingredients"])
        assert by_name[kind].data.metrics["test_dice"] == pytest.approx(record["test_dice"])
    return runs


def test_mlflow_follows_summary_json_through_a_kill_in_the_soup_switch(smoke_run, tmp_path):
    """kill -9 right after a soup step switched summary.json to a new set (here: top_k 1
    after top_k 2, so the soups differ in size): MLflow already holds the new set's result
    runs, tagged with it, and the next soup retires the rest, leaving one set that agrees
    with summary.json and nothing RUNNING (issue 30, item 4)."""
    import shutil

    _, run_dir, _ = smoke_run
    copy = tmp_path / "runs" / "smoke"
    shutil.copytree(run_dir, copy, symlinks=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = cli("soup", str(copy), "--top-k", "2", "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent = json.loads((copy / "run.json").read_text())["parent_run_id"]
    first = json.loads((copy / "summary.json").read_text())
    assert len(first["soups"]["uniform"]["ingredients"]) == 2
    _agree(uri, parent, first)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_SWITCH, str(copy), "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    switched = json.loads((copy / "summary.json").read_text())
    assert len(switched["soups"]["uniform"]["ingredients"]) == 1
    assert switched["result_set"] != first["result_set"]
    _agree(uri, parent, switched)  # MLflow has the set summary.json names, already
    assert len(_result_runs(uri, parent)) == 6  # and the old one, until the next step
    proc = cli("soup", str(copy), "--top-k", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MLflow: retired 3 result run(s) an interrupted soup step left" in proc.stderr
    final = json.loads((copy / "summary.json").read_text())
    assert _agree(uri, parent, final) and len(_result_runs(uri, parent)) == 3


def test_a_trial_failed_by_bad_data_ends_the_run_in_one_line(tmp_path):
    """A trial that raises segtune's DataError (here injected as a corrupt input at the end of
    epoch 1) is the user's to fix: no retry, no other trial, the search stops at once with one
    line naming the trial and the cause and how to continue, exit 2; Ray's traceback is only
    in the trial's error file (issue 30, item 8)."""
    storage, faults = tmp_path / "runs", tmp_path / "faults"
    proc = cli_for_trials(fault_env(f"epoch=1,times=9,kind=data,dir={faults}"), "run", SMOKE,
                          "--storage", str(storage), "--name", "corrupt",
                          "--set", "search.max_failures=1", "--set", "search.max_concurrent=1",
                          "--set", "lr_finder.enabled=false", "--set", "tracking.plots=false")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"segtune: error: trial (\w+): {re.escape(str(faults))}/image.npy: injected corrupt "
        r"input at epoch 1 \(SEGTUNE_FAULT\); fix it, then continue the search with: python "
        rf"-m search run {SMOKE} --name corrupt --storage {re.escape(str(storage))} "
        r"--set search.max_failures=1 .*--resume", last), last
    for noise in ("Traceback", "RayTaskError", "Trial task failed", "retry 1",
                  "Trials did not complete", "Tuner.restore"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert len(list(faults.glob("*.attempt.*"))) == 1  # not retried, no second trial
    trial = re.fullmatch(r"segtune: error: trial (\w+): .*", last).group(1)
    error_file = storage / "corrupt" / f"trial_{trial}" / "error.txt"
    text = error_file.read_text()  # Ray's traceback, kept for --debug users
    assert "ray::SegtuneTrial.train()" in text and 'File "' in text
    assert "injected corrupt input at epoch 1" in text
