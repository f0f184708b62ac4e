"""Optimizers and layer-wise learning-rate bands.

The five bands of the hand-tuned recipe: early encoder, deep encoder, middle (bottleneck),
decoder, head. Every parameter lands in exactly one band, assigned from its module name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BANDS = ("early_encoder", "deep_encoder", "middle", "decoder", "head")


def unet_band(name: str, depth_count: int) -> str:
    """Band of a MONAI `UNet` parameter from its name.

    UNet nests itself: `model.0` is the level-0 down block, `model.1.submodule` the next level,
    ..., the innermost `submodule` the bottom; `.2` is the up block of a level. The last up block
    (`model.2`) emits the classes: its final residual unit (`model.2.1`), or all of it without
    residual units, is the head. The first half of the down levels (rounded up) is the early
    encoder, the rest the deep encoder.
    """
    rest = name.removeprefix("model.")
    depth = 0
    while rest.startswith("1.submodule."):
        depth += 1
        rest = rest.removeprefix("1.submodule.")
    first, _, tail = rest.partition(".")
    if depth == depth_count or first not in ("0", "2"):
        return "middle"
    if first == "0":
        return "early_encoder" if depth < (depth_count + 1) // 2 else "deep_encoder"
    if depth == 0 and (tail.startswith("1.") or not tail.split(".")[0].isdigit()):
        return "head"
    return "decoder"


def param_bands(model: torch.nn.Module, depth_count: int) -> dict[str, list[str]]:
    """Parameter names by band, for a MONAI UNet with `depth_count` down levels."""
    bands: dict[str, list[str]] = {b: [] for b in BANDS}
    for name, _ in model.named_parameters():
        bands[unet_band(name, depth_count)].append(name)
    return bands


def param_groups(
    model: torch.nn.Module, depth_count: int, lr: float, multipliers: dict[str, float]
) -> list[dict[str, Any]]:
    """One optimizer group per non-empty band, with lr = base lr x the band's multiplier."""
    params = dict(model.named_parameters())
    return [
        {"name": band, "params": [params[n] for n in names], "lr": lr * multipliers[band]}
        for band, names in param_bands(model, depth_count).items()
        if names
    ]


@dataclass(frozen=True)
class OptimizerDef:
    """An optimizer: its factory, the spec keys it takes with their defaults, and whether it
    is schedule-free (its own warmup and averaging; no external LR schedule)."""

    build: Callable[..., Any]
    defaults: dict[str, Any]
    schedule_free: bool = False
    warmup: bool = True  # takes `warmup_steps` (schedule-free RAdam does not)


def _novograd(groups, o, warmup_steps):
    from monai.optimizers import Novograd

    return Novograd(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                    weight_decay=o["weight_decay"], grad_averaging=o["grad_averaging"])


def _adamw(groups, o, warmup_steps):
    import torch

    return torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                             weight_decay=o["weight_decay"])


def _sgd(groups, o, warmup_steps):
    import torch

    return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                           weight_decay=o["weight_decay"])


# Schedule-free: keywords only (the classes order their positional arguments differently).
def _sf_adamw(groups, o, warmup_steps):
    from schedulefree import AdamWScheduleFree

    return AdamWScheduleFree(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                             weight_decay=o["weight_decay"], warmup_steps=warmup_steps)


def _sf_sgd(groups, o, warmup_steps):
    from schedulefree import SGDScheduleFree

    return SGDScheduleFree(groups, lr=o["lr"], momentum=o["momentum"],
                           weight_decay=o["weight_decay"], warmup_steps=warmup_steps)


def _sf_radam(groups, o, warmup_steps):
    from schedulefree import RAdamScheduleFree

    return RAdamScheduleFree(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                             weight_decay=o["weight_decay"])


_ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
OPTIMIZERS: dict[str, OptimizerDef] = {
    "novograd": OptimizerDef(_novograd, {"beta1": 0.9, "beta2": 0.98, "eps": 1e-8,
                                         "weight_decay": 0.0, "grad_averaging": False}),
    "adamw": OptimizerDef(_adamw, {**_ADAM, "weight_decay": 0.01}),
    "sgd": OptimizerDef(_sgd, {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0}),
    "schedulefree_adamw": OptimizerDef(_sf_adamw, {**_ADAM, "weight_decay": 0.0},
                                       schedule_free=True),
    "schedulefree_sgd": OptimizerDef(_sf_sgd, {"momentum": 0.9, "weight_decay": 0.0},
                                     schedule_free=True),
    "schedulefree_radam": OptimizerDef(_sf_radam, {**_ADAM, "weight_decay": 0.0},
                                       schedule_free=True, warmup=False),
}


def optimizer_settings(cfg: Any) -> dict[str, Any]:
    """`lr` and every parameter the optimizer takes: the spec's value, else its default."""
    spec_def = OPTIMIZERS[cfg.name]
    values = {"lr": cfg.lr}
    for key, default in spec_def.defaults.items():
        value = getattr(cfg, key)
        values[key] = default if value is None else value
    return values


def build_optimizer(groups: list[dict], cfg: Any, warmup_steps: int = 0
                    ) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name` (the spec's resolved optimizer section); schedule-free
    ones get `warmup_steps` as their own warmup."""
    return OPTIMIZERS[cfg.name].build(groups, optimizer_settings(cfg), warmup_steps)
