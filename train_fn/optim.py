"""Optimizers and layer-wise learning-rate bands.

The five bands of the hand-tuned recipe: early encoder, deep encoder, middle (bottleneck),
decoder, head. Every parameter lands in exactly one band, assigned from its module name.
"""

from __future__ import annotations

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


def build_novograd(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    from monai.optimizers import Novograd

    return Novograd(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        grad_averaging=cfg.grad_averaging,
    )


def build_adamw(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


OPTIMIZERS = {"novograd": build_novograd, "adamw": build_adamw}


def build_optimizer(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name` (the spec's resolved optimizer section)."""
    return OPTIMIZERS[cfg.name](groups, cfg)
