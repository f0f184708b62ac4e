"""Checkpoints are plain dicts of tensors and primitives, saved atomically and loaded with
`weights_only=True`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from train_fn.files import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `folder/checkpoint.pt` (a kill leaves the old file or none)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file, or the checkpoint in a folder, onto the CPU. With `mmap` the
    tensors are mapped from the file and read only when touched: taking the model weights out
    of a checkpoint then never reads its optimizer state into memory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
