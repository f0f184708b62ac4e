"""Fault injection for the failure-path tests, from outside segtune (nothing in segtune reads
it). Put this folder first on PYTHONPATH and set SEGTUNE_FAULT: every process that then
imports `train_fn.data` (trial workers given both through the job's runtime environment,
see `cli_for_trials` in tests/helpers.py; a CLI started with them) gets a
`PatchSampler.epoch` that raises once an epoch's training batches are used up, like a fault
at the end of that epoch.

SEGTUNE_FAULT="epoch=E,times=N,dir=D[,trials=K][,kind=oom]": the first N attempts of a trial
raise at the end of epoch E (a RuntimeError, with `kind=oom` the error torch raises when
memory runs out, with `kind=data` segtune's DataError, as for a corrupt input); with
`trials`, only the first K trials to get there are faulty, and `times` and `kind` may give
one value per such trial (`times=1/9,kind=error/oom`). Attempts and claims are files in D, so
they count across processes and retries. A trial is named by Ray's trial id
(SEGTUNE_TRIAL_ID in a test that calls `fault` itself; "plain" outside Ray).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import uuid
from pathlib import Path


def _trial_key() -> str:
    if "SEGTUNE_TRIAL_ID" in os.environ:
        return os.environ["SEGTUNE_TRIAL_ID"]
    if "ray" in sys.modules:
        try:
            from ray import tune

            return tune.get_context().get_trial_id() or "plain"
        except Exception:  # noqa: BLE001 - not inside a trial
            return "plain"
    return "plain"


def _claim(folder: Path, key: str, slots: int) -> int | None:
    """The claim file of `slots` that `key` holds (or now takes), None if all are taken."""
    for i in range(slots):
        path = folder / f"claim.{i}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if path.read_text() == key:
                return i
            continue
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return i
    return None


def fault(epoch: int) -> None:
    """Raise the fault SEGTUNE_FAULT asks for at the end of `epoch` (1-based), if any."""
    setting = os.environ.get("SEGTUNE_FAULT")
    if not setting:
        return
    opts = dict(item.split("=", 1) for item in setting.split(","))
    if int(opts["epoch"]) != epoch:
        return
    folder = Path(opts["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    key = _trial_key()
    slot = 0
    if "trials" in opts:
        slot = _claim(folder, key, int(opts["trials"]))
        if slot is None:
            return
    times, kinds = opts["times"].split("/"), opts.get("kind", "error").split("/")
    if len(list(folder.glob(f"{key}.attempt.*"))) < int(times[min(slot, len(times) - 1)]):
        (folder / f"{key}.attempt.{uuid.uuid4().hex}").touch()
        if kinds[min(slot, len(kinds) - 1)] == "oom":
            import torch

            raise torch.OutOfMemoryError(f"injected out of memory at epoch {epoch} "
                                         "(SEGTUNE_FAULT)")
        if kinds[min(slot, len(kinds) - 1)] == "data":
            from train_fn.errors import DataError

            raise DataError(f"{folder / 'image.npy'}: injected corrupt input at epoch {epoch} "
                            "(SEGTUNE_FAULT)")
        raise RuntimeError(f"injected fault at epoch {epoch} (SEGTUNE_FAULT)")


def patch(module) -> None:
    """`PatchSampler.epoch(e, ...)` calls `fault(e + 1)` when its batches are used up (the
    LR range test's and BatchNorm's epochs are numbered 1000 and up: never faulty)."""
    sampler = module.PatchSampler
    if getattr(sampler.epoch, "faulty", False):
        return
    original = sampler.epoch

    @functools.wraps(original)
    def epoch(self, index, *args, **kwargs):
        yield from original(self, index, *args, **kwargs)
        fault(index + 1)

    epoch.faulty = True
    sampler.epoch = epoch


class _Finder:
    """Patches `train_fn.data` right after it is imported."""

    def find_spec(self, name, path, target=None):
        if name != "train_fn.data":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("SEGTUNE_FAULT"):
    sys.meta_path.insert(0, _Finder())
