from __future__ import annotations

import pytest
import torch

from search.errors import ArgumentError
from search.evaluate import summarise
from search.predict import load_weights
from train_fn.checkpoint import save_checkpoint


def test_model_file_is_loaded_exactly(tmp_path):
    folder = tmp_path / "models"
    save_checkpoint(folder, {"model": {"w": torch.zeros(2)}})
    torch.save({"model": {"w": torch.ones(2)}}, folder / "mymodel.pt")
    name, path, state = load_weights(tmp_path, str(folder / "mymodel.pt"))
    assert path == folder / "mymodel.pt"
    assert name == "mymodel"
    assert torch.equal(state["model"]["w"], torch.ones(2))
    # The folder, or its checkpoint.pt, still means checkpoint.pt.
    for model in (folder, folder / "checkpoint.pt"):
        name, path, state = load_weights(tmp_path, str(model))
        assert (name, path) == ("models", folder / "checkpoint.pt")
        assert torch.equal(state["model"]["w"], torch.zeros(2))


def test_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "models" / "other.pt"
    with pytest.raises(ArgumentError) as err:
        load_weights(tmp_path, str(missing))
    assert str(err.value) == (f"--model {missing}: not one of best, greedy, uniform and no "
                              f"checkpoint file there ({missing} does not exist)")
    assert "\n" not in str(err.value)


def test_unknown_model_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArgumentError) as err:
        load_weights(tmp_path, "nothing")
    assert str(err.value) == ("--model nothing: not one of best, greedy, uniform and no "
                              "checkpoint file there")


def _case(**dice):
    return {"metrics": {r: {"Dice": d, "HD95": 1.0} for r, d in dice.items()}}


def test_summary_means_follow_nnunet():
    import math

    # "b" is absent from every case: its mean is NaN, and so is the foreground mean (nnU-Net:
    # np.nanmean per region over cases, then np.mean over regions).
    per_case = [_case(a=0.5, b=math.nan, c=0.9), _case(a=math.nan, b=math.nan, c=0.7),
                _case(a=0.7, b=math.nan, c=0.8)]
    summary = summarise(per_case, ["a", "b", "c"])
    assert summary["mean"]["a"]["Dice"] == pytest.approx(0.6)
    assert math.isnan(summary["mean"]["b"]["Dice"])
    assert summary["mean"]["c"]["Dice"] == pytest.approx(0.8)
    assert math.isnan(summary["foreground_mean"]["Dice"])
    assert summary["foreground_mean"]["HD95"] == pytest.approx(1.0)
    summary = summarise([{"metrics": {r: c["metrics"][r] for r in "ac"}} for c in per_case],
                        ["a", "c"])
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.7)
