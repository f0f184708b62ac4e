"""Every user mistake is one line naming it, exit code 2 (issue 30, item 8): each numeric
setting of the spec with a value far out of range, and each option of each subcommand with an
out-of-range value (tests/e2e/test_e2e_mistakes.py walks those on a finished run)."""

from __future__ import annotations

import typing

import pytest
from helpers import ROOT

from search.cli import main
from search.spec import Spec
from search.spec.leaves import _Section

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


def _main(args: list[str]) -> int:
    """`main` as `python -m search` runs it: argparse's mistakes exit too."""
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code
# Settings that need another model to be taken at all (the range is checked first anyway).
OTHER_MODEL = {"kernel_size": "dynunet", "deep_supr_num": "dynunet", "init_filters":
               "mednext", "blocks_down": "mednext", "blocks_up": "mednext",
               "blocks_bottleneck": "mednext"}


def _numeric_settings():
    """(dotted key, how many numbers it takes: 0 for one, n for an n-tuple, -1 any length)."""
    out = []
    for section, field in Spec.model_fields.items():
        for name, info in field.annotation.model_fields.items():
            text = str(info.annotation)
            if "int" not in text and "float" not in text:
                continue
            origin = [typing.get_origin(a) for a in (info.annotation,
                                                     *typing.get_args(info.annotation))]
            if tuple in origin:
                args = [a for a in typing.get_args(info.annotation) if typing.get_origin(a)
                        is tuple] or [info.annotation]
                inner = typing.get_args(args[0])
                out.append((f"{section}.{name}", -1 if Ellipsis in inner else len(inner)))
            elif name not in ("labels", "regions"):  # dicts of label ids: checked elsewhere
                out.append((f"{section}.{name}", 0))
    return out


SETTINGS = _numeric_settings()


def test_the_walk_covers_the_settings_it_should():
    keys = {k for k, _ in SETTINGS}
    assert {"search.num_trials", "train.batch_size", "train.patch_size", "data.cases",
            "optimizer.lr", "model.channels", "data.window", "resources.cpu",
            "cv.folds", "lr_finder.num_iter"} <= keys
    assert len(keys) > 40 and issubclass(Spec.model_fields["train"].annotation, _Section)


@pytest.mark.parametrize("key, length", SETTINGS)
def test_every_numeric_setting_refuses_a_huge_value_in_one_line(tmp_path, capsys, key,
                                                                length):
    big = "1000000000000"  # an integer: a float setting takes it too
    value = big if length == 0 else f"[{', '.join([big] * (length if length > 0 else 3))}]"
    model = OTHER_MODEL.get(key.split(".")[1]) if key.startswith("model.") else None
    extra = ["--set", f"model.name={model}"] if model else []
    code = main(["run", SMOKE, "--dry-run", "--storage", str(tmp_path / "runs"), *extra,
                 "--set", f"{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("segtune: error: ") and err.count("\n") == 1, err
    assert key in err and "Traceback" not in err
    assert ("less than" in err or "at most" in err or "integer" in err
            or "must be" in err or "fit a device" in err), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, said", [
    (["run", SMOKE, "--dry-run", "--set", "train.patch_size=[1000, 1000, 1000]"],
     "train.batch_size x train.patch_size is 2,000,000,000 voxels per step; at most "
     "268,435,456 (e.g. 2 x 512^3) fit a device"),
    (["run", SMOKE, "--dry-run", "--set", "train.epochs=" + "9" * 5000],
     "--set train.epochs: a number of 5000 characters; a spec's numbers have at most 64"),
    (["soup", "{tmp}", "--top-k", "-5"],
     "argument --top-k: '-5': an integer from 1 to 1000 (see: python -m search soup --help)"),
    (["soup", "{tmp}", "--top-k", "0"], "argument --top-k: '0': an integer from 1 to 1000"),
    (["crossval", "{tmp}", "--top-k", "-3"], "argument --top-k: '-3': an integer from 1 to"),
    (["crossval", "{tmp}", "--folds", "1"], "argument --folds: '1': an integer from 2 to 100"),
    (["run", SMOKE, "--address", "127.0.0.1:70000"],
     "argument --address: '127.0.0.1:70000': auto, local, or HOST:PORT of a Ray head"),
    (["run", SMOKE, "--tracking-uri", "bogus://x"],
     "--tracking-uri bogus://x: not an MLflow tracking URI; use one of http://..."),
    (["run", SMOKE, "--tracking-uri", "file:///tmp/mlruns"],
     "--tracking-uri file:///tmp/mlruns: not an MLflow tracking URI"),
    (["lr-find", SMOKE, "--out", "{file}/x"], "--out {file}/x: {file} is a file, not a folder"),
    (["evaluate", "{tmp}", "--out", "{file}"], "--out {file}: {file} is a file, not a folder"),
])
def test_argument_mistakes_are_one_line_and_exit_2(tmp_path, capsys, args, said):
    file = tmp_path / "a-file"
    file.write_text("x")
    fill = {"tmp": tmp_path, "file": file}
    args = [a.format(**fill) for a in args]
    code = _main([*args, "--storage", str(tmp_path / "runs")] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("segtune: error: ") and said.format(**fill) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where, said", [
    ("{file}", "data.root {file}: cannot write the phantom there: not a directory; choose a "
     "new or empty folder you may write, with free space"),
    ("{file}/sub", "data.root {file}/sub: cannot write the phantom there: "),
    ("{busy}", "data.root {busy}: exists and is not a phantom folder (no phantom.json); "
     "choose an empty or new data.root"),
    ("{small}/phantom", "data.root {small}/phantom: cannot write the phantom there: no space "
     "left on device"),
])
def test_a_phantom_root_that_cannot_hold_it_is_one_line(tmp_path, capsys, where, said):
    import subprocess

    file, busy, small = tmp_path / "a-file", tmp_path / "busy", tmp_path / "small"
    file.write_text("x")
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    if "{small}" in where:
        small.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
    fill = {"file": file, "busy": busy, "small": small}
    try:
        code = _main(["run", SMOKE, "--storage", str(tmp_path / "runs"),
                      "--set", f"data.root={where.format(**fill)}"])
    finally:
        if "{small}" in where:
            leftovers = list(small.iterdir())
            subprocess.run(["umount", str(small)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("segtune:")]
    assert len(lines) == 1 and said.format(**fill) in lines[0], err
    assert file.read_text() == "x" and (busy / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "runs").exists()
    if "{small}" in where:
        assert leftovers == []  # no half-written phantom left on the full disk


def test_a_folder_or_a_fifo_as_the_spec_is_named_for_what_it_is(tmp_path, capsys):
    import os

    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    for path, said in ((tmp_path, "a folder, not a spec file"),
                       (fifo, "not a regular file (a pipe, socket or device); a spec is a "
                              "YAML file")):
        assert _main(["run", str(path), "--dry-run"]) == 2
        assert capsys.readouterr().err == f"segtune: error: {path}: {said}\n"


def test_a_huge_bad_value_is_shown_by_its_ends(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("model:\n  name: " + "x" * 200_000 + "\n")
    assert _main(["run", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segtune: error: {spec}:2: model.name: unknown model 'xxx")
    assert err.count("\n") == 1 and len(err) < 2100
    assert " characters left out) ... " in err and err.rstrip().endswith("mednext")


def test_the_resume_command_is_quoted_and_keeps_the_overrides():
    import shlex
    from pathlib import Path

    from search.api import resume_command

    line = resume_command("my specs/s.yaml", "run 1", None, Path("runs x"),
                          ["train.epochs=3", "optimizer.lr={type: float, low: 0.01}"])
    assert line == ("python -m search run 'my specs/s.yaml' --name 'run 1' --storage 'runs x' "
                    "--set train.epochs=3 --set 'optimizer.lr={type: float, low: 0.01}' "
                    "--resume")
    assert shlex.split(line)[4:6] == ["my specs/s.yaml", "--name"]
    assert resume_command("s.yaml", "a", "s3://b/p", Path("runs"), [], "10.0.0.5:6379") == (
        "python -m search run s.yaml --name a --storage s3://b/p --local-dir runs "
        "--address 10.0.0.5:6379 --resume")


def test_rays_own_resume_hint_is_not_shown_beside_segtunes(tmp_path, capsys, caplog):
    import logging

    assert _main(["run", SMOKE, "--dry-run", "--storage", str(tmp_path)]) == 0
    with caplog.at_level(logging.WARNING):
        logging.getLogger("ray.tune.tune").warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            "Resume experiment with: Tuner.restore(path=...)")
        logging.getLogger("ray.tune.tune").warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]


def test_a_run_whose_every_trial_diverged_names_the_non_finite_loss(tmp_path):
    from search.soup import SoupError, candidates
    from search.summary import Summary, TrialRecord

    trials = [TrialRecord(f"t{i}", "stopped: non-finite loss", val_dice=0.0) for i in range(3)]
    with pytest.raises(SoupError) as err:
        candidates(tmp_path, Summary(trials=trials))
    assert str(err.value) == (
        f"{tmp_path}: no trial finished an epoch with a checkpoint without erroring; 3 of 3 "
        "trial(s) stopped on a non-finite (NaN or infinite) training loss: lower "
        "optimizer.lr's range or set train.grad_clip")


@pytest.mark.parametrize("command", [["compare", "--baseline", "{other}"], ["crossval"]])
def test_a_copied_run_folder_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                  command):
    import json

    copy = tmp_path / "copy" / "run"
    copy.mkdir(parents=True)
    (copy / "run.json").write_text(json.dumps({
        "name": "run", "home": str(tmp_path / "original" / "run"), "experiment": "run",
        "tracking_uri": f"sqlite:///{tmp_path / 'original' / 'mlflow.db'}",
        "parent_run_id": "0" * 32}))
    before = sorted(p.name for p in copy.iterdir())
    args = [command[0], str(copy), *[a.format(other=tmp_path / "b.csv") for a in command[1:]]]
    assert _main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segtune: error: {copy}: this run folder was made at "
                          f"{tmp_path / 'original' / 'run'}, and its MLflow run"), err
    assert "--tracking-uri URI" in err and err.count("\n") == 1
    assert sorted(p.name for p in copy.iterdir()) == before


def test_two_baselines_of_one_file_name_keep_their_own_outputs(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_compare import write_run

    run = write_run(tmp_path, "a")
    firsts = []
    for folder, heart in (("x", "0.5"), ("y", "0.6"), ("x", "0.5")):
        (tmp_path / folder).mkdir(exist_ok=True)
        csv = tmp_path / folder / "baseline.csv"
        csv.write_text(f"class,mean\nheart,{heart}\n")
        assert _main(["compare", str(run), "--baseline", str(csv)]) == 0
        written = capsys.readouterr().err.split("written: ", 1)[1].split("/compare.md")[0]
        firsts.append(written)
    plain = str(run / "compare" / "best-test-vs-baseline")
    assert firsts[0] == firsts[2] == plain and firsts[1].startswith(plain + "-")
    assert "| heart |" in (run / "compare" / "best-test-vs-baseline" / "compare.md").read_text()
    assert f"baseline: `{tmp_path / 'y' / 'baseline.csv'}`" in open(
        f"{firsts[1]}/compare.md").read()
    assert f"baseline: `{tmp_path / 'x' / 'baseline.csv'}`" in open(
        f"{plain}/compare.md").read()


def test_a_baseline_of_thousands_of_rows_is_refused_before_anything_is_logged(tmp_path,
                                                                              capsys):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_compare import write_run

    run = write_run(tmp_path, "a")
    csv = tmp_path / "big.csv"
    csv.write_text("class,mean\n" + "".join(f"c{i},0.5\n" for i in range(200_000)))
    assert _main(["compare", str(run), "--baseline", str(csv)]) == 2
    assert capsys.readouterr().err == (
        f"segtune: error: --baseline {csv}: 200,000 classes; a baseline has at most 1,000 "
        "(one row per class and metric)\n")
    assert not (run / "compare").exists()
