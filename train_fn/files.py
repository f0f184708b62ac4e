"""Atomic file writes: every file segtune writes (JSON, text, checkpoints, NIfTI labels) goes
through `atomic_write`, so a kill or a full disk leaves the old file or the new one, never
half of one. Here, in `train_fn`, because trials write checkpoints too and `train_fn` imports
nothing of `search`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call `write(tmp)` on a hidden temporary file beside `path`, then rename it onto `path`
    (one `os.replace`: atomic on one file system). `suffix` ends the temporary name, for
    writers that choose the format by it (`.nii.gz`). The temporary name ends with this
    process's id, so a later process can tell a dead writer's leftover from a live one's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
