from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from search.cli import main


def test_dry_run_prints_settings_and_space_and_writes_nothing(tmp_path, capsys):
    from helpers import ROOT

    storage = tmp_path / "runs"
    code = main(["run", str(ROOT / "spaces" / "novograd.yaml"), "--dry-run",
                 "--storage", str(storage), "--set", "train.epochs=3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "train.epochs: 3" in out
    assert "optimizer.lr: float 0.01..0.2 log" in out
    assert "layers.middle: 1.0" in out
    assert "first configurations the sampler proposes" in out
    assert re.search(r"early_encoder +float 0.1..0.5 +10 tensors", out)
    assert re.search(r"\n  head +2x +2 tensors +680 parameters \(0.4%\)", out)
    assert "(100.0%)" not in out and "parameters" in out
    assert not storage.exists()


@pytest.mark.parametrize("args, message", [
    (["run", "missing.yaml"], "missing.yaml: no such spec file"),
    (["run", "{spec}", "--set", "optimizer.lrr=1"], "did you mean 'lr'?"),
    (["run", "{spec}", "--set", "model.name=vnet"], "unknown model 'vnet'"),
    (["run", "{spec}", "--name", "a/b"], "--name 'a/b': a run name is one folder name"),
    (["soup", "{tmp}"], "not a segtune run folder (no run.json)"),
    (["run", "{spec}", "--name", ""], "--name '': a run name is one folder name (no '/', no "
     "leading '.', no line breaks or other control characters, at most 128 characters)"),
    (["run", "{spec}", "--name", "a\nb"], "--name 'a\\nb': a run name is one folder name"),
    (["run", "{spec}", "--name", "x" * 300],
     f"--name {'x' * 40!r}... (300 characters): a run name is one folder name"),
    (["repeat", "{tmp}", "--seeds", "99999999999999999999999,1"],
     "--seeds 99999999999999999999999,1: seed 99999999999999999999999 is out of range; a seed "
     "is an integer from 0 to 4294967295"),
    (["repeat", "{tmp}", "--seeds", "1,-2"], "--seeds 1,-2: seed -2 is out of range"),
    (["run", "{spec}", "--dry-run", "--set", "optimizer.lr=.nan"],
     "--set optimizer.lr: optimizer.lr: Input should be a finite number, got nan"),
    (["run", "{spec}", "--dry-run", "--set", "train.patch_size=[0, 32, 16]"],
     "train.patch_size[0]: Input should be greater than or equal to 1, got 0"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, write_spec, capsys, args, message):
    spec = write_spec("train:\n  epochs: 1\n")
    args = [a.format(spec=spec, tmp=tmp_path) for a in args]
    assert main([*args, "--storage", str(tmp_path / "runs")] if args[0] == "run"
                else args) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtune: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_lr_find_command(tmp_path, capsys):
    from helpers import ROOT

    code = main(["lr-find", str(ROOT / "spaces" / "smoke.yaml"), "--out", str(tmp_path),
                 "--set", "lr_finder.num_iter=12"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"suggested lr: [0-9.e-]+ +\(novograd, steepest descent", out)
    assert "optimizer.lr = {type: float, low: " in out
    assert (tmp_path / "lr_finder_plot.png").is_file()


def _read_only_folder(tmp_path):
    """A folder this process cannot write in: a read-only one, or for root (who writes
    anywhere) /sys, where nobody can create files."""
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("no read-only folder to test with")
    except OSError:
        return Path("/sys")


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize("where, message", [
    ("file", "{storage}: {storage} is a file, not a folder; give a folder (it is created when "
             "missing)"),
    ("file/runs", "{storage}: {file} is a file, not a folder"),
    ("read-only/runs", "{storage}: cannot write in {read_only} ("),
])
def test_storage_that_cannot_hold_runs(tmp_path, write_spec, capsys, monkeypatch, dry_run,
                                       where, message):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    spec = write_spec("train:\n  epochs: 1\n")
    (tmp_path / "file").write_text("not a folder")
    read_only = _read_only_folder(tmp_path)
    storage = str(tmp_path / where).replace(str(tmp_path / "read-only"), str(read_only))
    assert main(["run", str(spec), "--storage", storage, *dry_run]) == 2
    err = capsys.readouterr().err
    expected = message.format(storage=storage, file=tmp_path / "file", read_only=read_only)
    assert err.startswith(f"segtune: error: --storage {expected}"), err
    assert err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "not a folder"
    assert not (read_only / "runs").exists()
