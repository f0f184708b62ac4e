"""One base class of user errors: every kind is a SegtuneError (and still a ValueError), and
the CLI turns any of them into one line and exit code 2."""

from __future__ import annotations

import pytest

from search.compare import CompareError
from search.errors import (
    ArgumentError,
    ResourceError,
    RunFolderError,
    SegtuneError,
    TrackingError,
)
from search.soup import SoupError
from search.spec import SpecError
from search.storage import StorageError
from train_fn.datasets import DataError


@pytest.mark.parametrize("kind", [SpecError, SoupError, DataError, CompareError, StorageError,
                                  ArgumentError, RunFolderError, ResourceError, TrackingError])
def test_user_errors_share_one_base(kind):
    assert issubclass(kind, SegtuneError) and issubclass(kind, ValueError)


def test_errors_are_typed_by_meaning(tmp_path):
    from search.evaluate import evaluate_run
    from search.predict import load_weights
    from search.retrain import pick_trials, repeat
    from search.summary import Summary, TrialRecord

    with pytest.raises(ArgumentError, match="^--split nope: choose one of"):
        evaluate_run(tmp_path, split="nope")
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "summary.json").write_text('{"trials": []}')
    with pytest.raises(ArgumentError, match="^--seeds 1,1: give two or more distinct seeds"):
        repeat(tmp_path, [1, 1])
    with pytest.raises(ArgumentError, match=r"^--trial zz: no such trial in this run"):
        pick_trials(Summary(trials=[TrialRecord("a", "completed", val_dice=0.5)]), "zz")
    with pytest.raises(RunFolderError, match="the run has no best trial yet"):
        load_weights(tmp_path, "best")


def test_resume_errors_are_about_the_run_folder(tmp_path):
    import json

    from search.api import _plain, _reopen
    from search.spec import load_spec

    spec = load_spec("spaces/smoke.yaml")
    with pytest.raises(RunFolderError, match="nothing to resume \\(no run.json"):
        _reopen(spec, tmp_path / "never")
    (tmp_path / "run.json").write_text(json.dumps({"input_spec": _plain(spec.flat())}))
    with pytest.raises(RunFolderError, match="no Ray Tune state to resume from"):
        _reopen(spec, tmp_path)


def test_cli_catches_the_base_once(monkeypatch, capsys):
    import search.cli as cli

    class NewKind(SegtuneError):
        pass

    def fail(args):
        raise NewKind("x.yaml: a new kind of user error")

    monkeypatch.setattr(cli, "_soup", fail)
    assert cli.main(["soup", "somewhere"]) == 2
    assert capsys.readouterr().err == "segtune: error: x.yaml: a new kind of user error\n"
