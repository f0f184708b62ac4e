"""Weight averaging along one trial's trajectory (`train.average`): SWA (Izmailov et al. 2018),
the uniform mean of the weights at the end of each epoch of the trial's last part, or EMA, an
exponential moving average updated after every step of that part. Both are torch's
`torch.optim.swa_utils.AveragedModel`; the averaged copy is validated and checkpointed beside
the raw weights, and offered to the soups as an ingredient of its own.

Schedule-free optimizers already evaluate an average (their x, a running mean of the
iterates): their steps move y, not x, so the average here is updated once per epoch, after
`optimizer.eval()` has moved the weights to x, whether SWA or EMA (an EMA decay then weighs
epochs, not steps). Parameters are averaged; BatchNorm statistics of the averaged weights are
recomputed on fixed training patches (an average of running statistics fits no weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def start_epoch(fraction: float, epochs: int) -> int:
    """The 0-based epoch from which the average is updated: the last `fraction` of the
    epochs (at least the last one)."""
    return epochs - min(epochs, max(1, round(fraction * epochs)))


class WeightAverage:
    """SWA or EMA of `model`'s parameters from epoch `start` (0-based) on. `per_step`: EMA
    updates after every optimizer step; otherwise the average takes the weights once at the
    end of each epoch."""

    def __init__(self, model: torch.nn.Module, kind: str, start: int, decay: float,
                 schedule_free: bool):
        self.kind, self.start = kind, start
        self.per_step = kind == "ema" and not schedule_free
        fn = get_ema_multi_avg_fn(decay) if kind == "ema" else None
        self.model = AveragedModel(model, multi_avg_fn=fn, use_buffers=False)

    def active(self, epoch: int) -> bool:
        return epoch >= self.start

    def after_step(self, model: torch.nn.Module, epoch: int) -> None:
        if self.per_step and self.active(epoch):
            self.model.update_parameters(model)

    def after_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        if not self.per_step and self.active(epoch):
            self.model.update_parameters(model)

    @property
    def count(self) -> int:
        return int(self.model.n_averaged)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged network's state dict, copied to the CPU."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.module.state_dict()
                .items()}

    def state(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint keeps: kind, first epoch (1-based), count, weights, scores."""
        return {"kind": self.kind, "start_epoch": self.start + 1, "count": self.count,
                "model": self.weights(), "metrics": metrics}

    def load(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state(...)`."""
        self.model.module.load_state_dict(saved["model"])
        self.model.n_averaged.fill_(saved["count"])
