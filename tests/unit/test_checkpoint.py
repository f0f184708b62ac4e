from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_fn.checkpoint import load_checkpoint, save_checkpoint


def mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_mmap_load_maps_the_file_and_reads_the_same_values(tmp_path):
    state = {"model": {"w": torch.randn(64, 64), "n": torch.tensor(3)},
             "optimizer": {"state": {0: {"exp_avg": torch.randn(64, 64)}}}, "epoch": 2}
    path = save_checkpoint(tmp_path / "t1", state)
    plain = load_checkpoint(tmp_path / "t1")
    assert not mapped(path)
    lazy = load_checkpoint(path, mmap=True)
    assert mapped(path)  # tensors are views of the file, read when touched
    assert lazy["epoch"] == 2
    torch.testing.assert_close(lazy["model"], plain["model"], rtol=0, atol=0)
    torch.testing.assert_close(lazy["optimizer"]["state"][0]["exp_avg"],
                               state["optimizer"]["state"][0]["exp_avg"], rtol=0, atol=0)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="t2/checkpoint.pt: no checkpoint"):
        load_checkpoint(tmp_path / "t2" / "checkpoint.pt")


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_a_save_interrupted_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    import os

    save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(3)})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a Ctrl-C at that instant raises

    monkeypatch.setattr(torch if where == "torch.save" else os,
                        where.split(".")[1], killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    kept = load_checkpoint(tmp_path)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.ones(3))
