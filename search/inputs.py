"""What `predict` and `evaluate` check before they write anything: that a `--model` file is a
segtune checkpoint with finite weights, and that every input image reads to its end and holds
only finite values. Each problem is one line naming the file (exit code 2)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from search.errors import ArgumentError, InputError
from search.lazy import LazyModule

checkpoint_io = LazyModule("train_fn.checkpoint")
torch = LazyModule("torch")


def read_checkpoint(path: Path, model: str, option: str = "--model") -> dict[str, Any]:
    """The checkpoint at `path` (given as `--model model`), or one line saying why it is not
    a segtune checkpoint: a file that `torch.load(weights_only=True)` refuses (any other
    pickle, never executed), or that holds no dict of `model` weights."""
    try:
        state = checkpoint_io.load_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a foreign file
        # torch's own text advises weights_only=False: never for a file of unknown origin.
        raise ArgumentError(f"{option} {model}: {path} is not a segtune checkpoint "
                            f"(torch.load(weights_only=True) refused it: "
                            f"{type(err).__name__}; nothing in it was run)") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict without 'model'"
        raise ArgumentError(f"{option} {model}: {path} is not a segtune checkpoint (a dict "
                            f"with 'model' weights); it holds {got}")
    return state


def check_finite_weights(weights: dict[str, Any], path: Path | str, model: str) -> None:
    """Refuse weights with a NaN or infinite value: they predict all background, silently."""
    bad = [name for name, t in weights.items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InputError(f"--model {model}: {path} has non-finite (NaN or infinite) weights "
                         f"in {', '.join(bad[:3])}{more}; it cannot predict (pick another "
                         "checkpoint or soup)")


def check_readable(path: Path) -> None:
    """Read an image to its last voxel (a truncated `.nii.gz` passes a header-only check,
    then fails mid-run without its name) and refuse non-finite values (a NaN region would be
    predicted as background, silently)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib raise many kinds
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: cannot be read to its end (truncated or damaged: "
                         f"{type(err).__name__}{': ' + first if first else ''})") from None
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.all():
            count = int(finite.size - np.count_nonzero(finite))
            share = 100.0 * count / finite.size
            raise InputError(f"{path}: {count} voxel(s) ({_pct(share)}) are NaN or infinite; "
                             "an image to segment holds finite values only")


def _pct(share: float) -> str:
    return f"{share:.2g}%" if share < 1 else f"{math.floor(share)}%"


def check_inputs(images: list[Path]) -> None:
    """`check_readable` for every image, all before the first prediction is written; one line
    naming the first bad image and how many more there are (by name)."""
    problems = []
    for image in images:
        try:
            check_readable(image)
        except InputError as err:
            problems.append((image, str(err)))
    if problems:
        more = problems[1:]
        tail = (f"; {len(more)} more bad input(s): " + ", ".join(str(p) for p, _ in more[:5])
                + (" ..." if len(more) > 5 else "")) if more else ""
        raise InputError(f"{problems[0][1]}{tail}; nothing was written")


__all__ = ["InputError", "check_finite_weights", "check_inputs", "check_readable",
           "read_checkpoint"]
