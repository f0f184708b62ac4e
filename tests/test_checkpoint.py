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
