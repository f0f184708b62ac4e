"""Learning-rate range test (MONAI's `LearningRateFinder`) on the spec's model, data and
optimizer.

MONAI's finder ramps every param group to one LR and records group 0 only, so it runs on a
single-group copy of the optimizer (no layer multipliers, no schedule attached). It never calls
`optimizer.train()`, which schedule-free optimizers need before a step: done here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from train_fn.data import PatchSampler, load_volumes
from train_fn.datasets import Dataset, open_dataset
from train_fn.loop import deep_supervision_loss, pick_device, use_trial_threads
from train_fn.models import build_model
from train_fn.optim import OPTIMIZERS, build_optimizer

if TYPE_CHECKING:
    from search.spec import Spec

logger = logging.getLogger(__name__)
EDGE = 0.1  # a pick in the outer 10% of the log range is suspect


class _Patches(torch.utils.data.IterableDataset):
    """Training patches as a dataset MONAI's finder can iterate (and restart)."""

    def __init__(self, sampler, steps: int, batch_size: int):
        self.sampler, self.steps, self.batch_size, self.round = sampler, steps, batch_size, 0

    def __iter__(self):
        self.round += 1
        return iter(self.sampler.epoch(1000 + self.round, self.steps, self.batch_size))


def steepest(lrs: list[float], losses: list[float], skip_start: int = 0,
             skip_end: int = 1) -> float:
    """The LR at the steepest descent of the loss (MONAI's rule: argmin of the gradient over
    the iteration index, the last `skip_end` points dropped)."""
    end = len(lrs) - skip_end
    lrs, losses = lrs[skip_start:end], losses[skip_start:end]
    if len(losses) < 3:
        raise ValueError(f"the range test has {len(losses)} usable points; raise num_iter")
    return float(lrs[int(np.gradient(np.asarray(losses)).argmin())])


def edge_warning(suggestion: float, start_lr: float, end_lr: float,
                 tested_end: float | None = None) -> str | None:
    """A warning when the pick sits at the edge of the tested (log) range, where the true
    optimum may lie outside it."""
    top = tested_end or end_lr
    span = math.log(top) - math.log(start_lr)
    where = (math.log(suggestion) - math.log(start_lr)) / span if span > 0 else 0.5
    if where <= EDGE:
        return (f"the suggested lr {suggestion:.3g} sits at the low edge of the range "
                f"[{start_lr:.3g}, {top:.3g}]: lower lr_finder.start_lr and test again")
    if where >= 1 - EDGE:
        return (f"the suggested lr {suggestion:.3g} sits at the high edge of the range "
                f"[{start_lr:.3g}, {top:.3g}]: raise lr_finder.end_lr (or num_iter) and test "
                "again")
    return None


def range_test(spec: Spec, split: dict[str, list[str]], data: Any) -> dict[str, Any]:
    """Run the range test; return its record: the suggestion, the warning (or None), the
    settings and the curve. Writes nothing (`search.lrfind` saves the record and its plot)."""
    from monai.losses import DiceCELoss
    from monai.optimizers import LearningRateFinder

    cfg = spec.lr_finder
    use_trial_threads(spec)
    device = pick_device(spec.train.device)
    ds = data if isinstance(data, Dataset) else open_dataset(spec.data, data)
    volumes = load_volumes(ds.subset(split["train"]), spec.data, ds.num_classes)
    sampler = PatchSampler(volumes, spec.train.patch_size, spec.train.seed, ds.num_classes)
    loader = torch.utils.data.DataLoader(
        _Patches(sampler, cfg.num_iter, spec.train.batch_size), batch_size=None)

    model = build_model(spec.model, len(ds.channels), ds.num_classes).to(device)
    optimizer = build_optimizer([{"params": list(model.parameters()), "lr": cfg.start_lr}],
                                spec.optimizer)  # one group; no warmup, no schedule
    if OPTIMIZERS[spec.optimizer.name].schedule_free:
        optimizer.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    finder = LearningRateFinder(model, optimizer,
                                lambda out, label: deep_supervision_loss(loss_fn, out, label),
                                device=device, verbose=False)
    finder.range_test(loader, start_lr=cfg.start_lr, end_lr=cfg.end_lr,
                      num_iter=cfg.num_iter, smooth_f=cfg.smooth, diverge_th=cfg.diverge)
    lrs, losses = finder.history["lr"], finder.history["loss"]
    suggestion = steepest(lrs, losses, skip_start=cfg.skip_start)
    warning = edge_warning(suggestion, cfg.start_lr, cfg.end_lr, tested_end=lrs[-1])
    if warning:
        logger.warning("LR finder: %s", warning)

    return {"suggestion": suggestion, "warning": warning, "optimizer": spec.optimizer.name,
            "model": spec.model.name, "start_lr": cfg.start_lr, "end_lr": cfg.end_lr,
            "num_iter": cfg.num_iter, "skip_start": cfg.skip_start,
            "lr": [float(x) for x in lrs], "loss": [float(x) for x in losses]}


def plot_range_test(result: dict[str, Any], path: str | Path,
                    used: float | dict[str, float] | None = None) -> Path:
    """Draw a range test's record (as `range_test` returns it) to `path`: the smoothed loss
    against the lr over the tested range, the pick, and, given `used`, the lr or the
    `{low, high}` range the search then used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = result.get("skip_start", 0)
    lrs, losses = result["lr"][skip:-1], result["loss"][skip:-1]  # as the pick saw them
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="C0", label="loss (smoothed)")
    ax.set_xscale("log")
    ax.axvspan(result["lr"][0], result["lr"][-1], color="0.85", zorder=0,
               label=f"tested {result['lr'][0]:.2g} to {result['lr'][-1]:.2g}")
    ax.axvline(result["suggestion"], color="C3", linestyle="--",
               label=f"pick {result['suggestion']:.3g}")
    if isinstance(used, dict):
        ax.axvspan(used["low"], used["high"], color="C2", alpha=0.25,
                   label=f"searched {used['low']:.2g} to {used['high']:.2g}")
    elif used is not None:
        ax.axvline(used, color="C2", label=f"lr set to {used:.3g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"LR range test: {result.get('optimizer', '')}, {result.get('model', '')}")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
