"""Start-up timestamps for bench/startup.py, in the driver and in every Ray worker process.

Put this folder first on PYTHONPATH and set SEGTUNE_STARTUP_LOG to a file: each process then
appends JSON lines {pid, event, t (wall clock)} when it starts, when some modules start and end
importing, and when the start-up steps of `python -m search run` begin and end. Does nothing
without SEGTUNE_STARTUP_LOG. Benchmark only: nothing in segtune imports it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time

LOG = os.environ.get("SEGTUNE_STARTUP_LOG")
_seen: set[str] = set()


def mark(event: str, once: bool = False) -> None:
    if once:
        if event in _seen:
            return
        _seen.add(event)
    with open(LOG, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "event": event, "t": time.time()}) + "\n")


def timed(owner, attr: str, label: str, once: bool = False) -> None:
    """Wrap owner.attr to mark `label start` and `label end` around each (or the first) call."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        mark(f"{label} start", once)
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{label} end", once)

    setattr(owner, attr, wrapper)


def _patch_loop(module) -> None:
    import torch

    timed(module, "train", "trial train()", once=True)
    timed(module, "deep_supervision_loss", "first step forward", once=True)
    timed(torch.nn.utils, "clip_grad_norm_", "first step clip", once=True)


PATCHES = {
    "search.cli": lambda m: timed(m, "main", "cli main"),
    "search.spec": lambda m: timed(m, "load_spec", "load_spec"),
    "search.prepare": lambda m: timed(m, "prepare_data", "prepare_data"),
    "search.tracking": lambda m: (timed(m.Tracker, "__init__", "mlflow Tracker()"),
                                  timed(m.Tracker, "start_parent", "mlflow parent run")),
    "ray": lambda m: timed(m, "init", "ray.init"),
    "ray.tune": lambda m: timed(m.Tuner, "fit", "Tuner.fit"),
    "search.tuner": lambda m: timed(m, "make_tuner", "make_tuner"),
    "train_fn.loop": _patch_loop,
}
WATCH = {"torch", "monai", "mlflow", "optuna", "pydantic", "numpy", "search.trainable", *PATCHES}


class _Finder:
    """Marks the import of each watched module and patches it once executed."""

    def find_spec(self, name, path, target=None):
        if name not in WATCH:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            mark(f"import {name} start")
            original(module)
            mark(f"import {name} end")
            if name in PATCHES:
                PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if LOG:
    mark("python started")
    sys.meta_path.insert(0, _Finder())
