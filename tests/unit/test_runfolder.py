"""RunFolder: a run folder's paths, typed run.json, spec, summary, tracker and set-up."""

from __future__ import annotations

import json
import logging

import pytest

from search.errors import RunFolderError
from search.runfolder import RunFolder, RunInfo
from search.spec import Spec, dump_spec
from search.summary import Summary, TrialRecord
from train_fn.datasets import find_cases, split_cases

INFO = {"name": "novograd", "home": "/somewhere/runs/novograd", "spec_file": "/s/novograd.yaml",
        "data_root": "/data/SegTHOR", "split": {"train": ["a", "b"], "val": ["c"], "test": ["d"]},
        "tracking_uri": "sqlite:////somewhere/runs/mlflow.db", "experiment": "novograd",
        "segtune": "0.1.0", "started": "2026-11-29T18:00:00",
        "input_spec": {"data.split_seed": 0}, "parent_run_id": "abc123"}


def test_run_json_round_trips_and_keeps_keys_it_does_not_know():
    info = RunInfo.from_json({**INFO, "added_later": [1, 2]})
    assert info.name == "novograd" and info.split["test"] == ["d"]
    assert info.storage_uri is None and info.extra == {"added_later": [1, 2]}
    # Written back as it was read: no storage_uri key for a local run, the unknown key kept.
    assert info.to_json() == {**INFO, "added_later": [1, 2]}
    stored = RunInfo.from_json({**INFO, "storage_uri": "s3://bucket/runs"})
    assert stored.to_json()["storage_uri"] == "s3://bucket/runs"
    assert RunInfo.from_json({}) == RunInfo()  # an older or partial run.json still opens


def test_paths(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.run_json == tmp_path / "run.json"
    assert folder.spec_yaml == tmp_path / "spec.yaml"
    assert folder.summary_json == tmp_path / "summary.json"
    assert folder.splits_json == tmp_path / "splits.json"
    assert folder.soup_link == tmp_path / "soup"
    assert folder.eval_dir("greedy", "val") == tmp_path / "eval" / "greedy-val"
    assert folder.compare_dir("x") == tmp_path / "compare" / "x"


@pytest.mark.parametrize("files, read, message", [
    ({}, "info", "{dir}: not a segtune run folder (no run.json)"),
    ({"run.json": "{\n  'name': 1}"}, "info",
     "{dir}/run.json: not valid JSON (line 2: Expecting property name enclosed in double "
     "quotes)"),
    ({}, "spec", "{dir}: not a segtune run folder (no spec.yaml)"),
    ({}, "summary", "{dir}: no summary.json (not a finished segtune run folder)"),
    ({"run.json": "{}"}, "tracker", "{dir}: no MLflow run recorded in run.json"),
])
def test_a_missing_or_bad_file_is_one_line_naming_it(tmp_path, files, read, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    folder = RunFolder(tmp_path)
    with pytest.raises(RunFolderError) as err:
        value = getattr(folder, read)
        if callable(value):
            value()
    assert str(err.value) == message.format(dir=tmp_path)


def test_what_is_there(tmp_path):
    folder = RunFolder(tmp_path)
    assert not folder.is_run() and not folder.is_finished()
    folder.write_info(RunInfo.from_json(INFO))
    folder.write_summary(Summary(name="x", trials=[TrialRecord("t1", "completed")]))
    assert folder.is_run() and folder.is_finished()
    assert json.loads(folder.run_json.read_text()) == INFO
    assert RunFolder(tmp_path).split == INFO["split"]
    summary = RunFolder(tmp_path).summary()
    assert summary.name == "x" and [t.trial_id for t in summary.trials] == ["t1"]
    assert not list(tmp_path.glob(".*.tmp-*"))  # written atomically, nothing left over


def test_experiment_location(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.experiment_location == str(tmp_path.resolve())  # no run.json yet
    folder.write_info(RunInfo.from_json(INFO))
    assert RunFolder(tmp_path).experiment_location == str(tmp_path.resolve())
    folder.write_info(RunInfo.from_json({**INFO, "storage_uri": "s3://bucket/runs/"}))
    assert RunFolder(tmp_path).experiment_location == "s3://bucket/runs/novograd"


def test_an_offline_store_only_warns(tmp_path, caplog):
    RunFolder(tmp_path).write_info(RunInfo.from_json({
        **INFO, "home": str(tmp_path.resolve()), "parent_run_id": "0" * 32,
        "tracking_uri": "sqlite:////nonexistent/dir/mlflow.db"}))
    caplog.set_level(logging.WARNING)
    assert RunFolder(tmp_path).log_parent({"m": 1.0}, [], "results are in files") is None
    assert "unavailable" in caplog.text and caplog.text.rstrip().endswith("results are in files")
    caplog.clear()
    (tmp_path / "run.json").write_text("{}")  # no MLflow run recorded: warns the same way
    assert RunFolder(tmp_path).tracker_or_none("results are in files") is None
    assert "no MLflow run recorded in run.json; results are in files" in caplog.text


def test_a_copied_folder_is_refused_its_original_run(tmp_path):
    from search.tracking import TrackingError

    RunFolder(tmp_path).write_info(RunInfo.from_json(INFO))  # home is elsewhere
    with pytest.raises(TrackingError, match="this run folder was made at /somewhere/runs/"):
        RunFolder(tmp_path).tracker_or_none("never")


def test_rehome_is_a_no_op_at_home_with_the_same_store(tmp_path):
    info = {**INFO, "home": str(tmp_path.resolve())}
    RunFolder(tmp_path).write_info(RunInfo.from_json(info))
    assert RunFolder(tmp_path).rehome(INFO["tracking_uri"]).to_json() == info
    assert json.loads((tmp_path / "run.json").read_text()) == info


def test_the_set_up_scoring_shares(tmp_path, phantom_root):
    split = split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)
    spec = Spec.model_validate({"data": {"source": "phantom", "cases": 6},
                                "model": {"channels": [4, 8, 16], "strides": [2, 2]},
                                "train": {"device": "cpu", "patch_size": [32, 32, 16]}})
    (tmp_path / "spec.yaml").write_text(dump_spec(spec))
    RunFolder(tmp_path).write_info(RunInfo(name="r", data_root=str(phantom_root), split=split))
    folder = RunFolder(tmp_path)
    assert folder.spec == spec
    assert len(folder.dataset.cases) == 6 and folder.dataset.num_classes == 5
    test = folder.volumes("test")
    assert len(test) == len(split["test"]) and test[0]["label"] is not None
    assert len(folder.volumes(split["train"], labels=False)) == len(split["train"])
    assert str(folder.device()) == "cpu"
    judge = folder.scorer()
    weights = {k: v.clone() for k, v in judge.model.state_dict().items()}
    mean, dice, hd = judge(weights, test, hd95=False)
    assert set(dice) == set(folder.dataset.regions) and hd == {}
    assert 0.0 <= mean <= 1.0
