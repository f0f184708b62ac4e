"""Optimizers and layer-wise learning-rate groups.

Each parameter has a place on the U path (train_fn.models); the spec's layer schedule turns it
into an LR multiplier: the five bands of the hand-tuned recipe (early encoder, deep encoder,
middle, decoder, head), a linear ramp, or a geometric decay from the head down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from train_fn.models import model_depth, place_params

if TYPE_CHECKING:
    import torch

    from search.spec import LayersSpec, ModelSpec, OptimizerSpec

BANDS = ("early_encoder", "deep_encoder", "middle", "decoder", "head")
MODES = {"bands": BANDS, "ramp": ("start", "end"), "geometric": ("decay",)}


def band_of(part: str, level: int, depth: int) -> str:
    """The band of a (part, level): the first half of the encoder levels (rounded up) is the
    early encoder, the rest the deep encoder."""
    if part == "encoder":
        return "early_encoder" if level < (depth + 1) // 2 else "deep_encoder"
    return part


def position(part: str, level: int, depth: int) -> int:
    """Place on the U path: encoder levels 0..D-1, middle D, decoder D+1 (deepest) .. 2D
    (level 0), head 2D+1."""
    return {"encoder": level, "middle": depth, "decoder": 2 * depth - level,
            "head": 2 * depth + 1}[part]


def _position_name(part: str, level: int) -> str:
    return {"encoder": f"enc{level}", "decoder": f"dec{level}"}.get(part, part)


def layer_multiplier(layers: LayersSpec, part: str, level: int, depth: int) -> tuple[str, float]:
    """(group name, LR multiplier) of a parameter under the spec's layer schedule:
    `bands` (a multiplier per band), `ramp` (linear from `start` at encoder level 0 to `end` at
    the head) or `geometric` (`decay` ** steps below the head, as in layer-wise LR decay)."""
    if layers.mode == "bands":
        band = band_of(part, level, depth)
        value = getattr(layers, band)
        return band, 1.0 if value is None else value
    pos, top = position(part, level, depth), 2 * depth + 1
    if layers.mode == "ramp":
        start = 1.0 if layers.start is None else layers.start
        end = 1.0 if layers.end is None else layers.end
        return _position_name(part, level), start + (end - start) * pos / top
    decay = 1.0 if layers.decay is None else layers.decay
    return _position_name(part, level), decay ** (top - pos)


def _no_decay(param: torch.nn.Parameter) -> bool:
    """Biases, norm scales and PReLU slopes: the 0-d and 1-d tensors."""
    return param.ndim <= 1


def param_groups(model: torch.nn.Module, model_cfg: ModelSpec, layers: LayersSpec, lr: float
                 ) -> list[dict[str, Any]]:
    """One optimizer group per layer-schedule group (and per decay / no-decay half with
    `layers.no_decay_norm_bias`), with lr = base lr x the group's multiplier. Every parameter
    lands in exactly one group."""
    depth = model_depth(model_cfg)
    params = dict(model.named_parameters())
    groups: dict[str, dict[str, Any]] = {}
    for name, (part, level) in place_params(model, model_cfg).items():
        key, mult = layer_multiplier(layers, part, level, depth)
        no_decay = layers.no_decay_norm_bias and _no_decay(params[name])
        if no_decay:
            key += "/no_decay"
        group = groups.setdefault(key, {"name": key, "params": [], "multiplier": mult,
                                        "lr": lr * mult})
        if no_decay:
            group["weight_decay"] = 0.0
        group["params"].append(params[name])
    return list(groups.values())


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


def _on_cuda(groups) -> bool:
    return all(p.is_cuda for g in groups for p in g["params"])


# On CUDA, torch's fused kernels: one launch per parameter group instead of a dozen `foreach`
# launches per group, which a step with five layer bands pays five times (measured on an H200:
# bf16 steps of the GPU example are launch-bound; bench/RESULTS.md, "GPU").
def _adamw(groups, o, warmup_steps):
    import torch

    return torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                             weight_decay=o["weight_decay"], fused=_on_cuda(groups) or None)


def _sgd(groups, o, warmup_steps):
    import torch

    return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                           weight_decay=o["weight_decay"], fused=_on_cuda(groups) or None)


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


def optimizer_settings(cfg: OptimizerSpec) -> dict[str, Any]:
    """`lr` and every parameter the optimizer takes: the spec's value, else its default."""
    spec_def = OPTIMIZERS[cfg.name]
    values = {"lr": cfg.lr}
    for key, default in spec_def.defaults.items():
        value = getattr(cfg, key)
        values[key] = default if value is None else value
    return values


def build_optimizer(groups: list[dict], cfg: OptimizerSpec, warmup_steps: int = 0
                    ) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name` (the spec's resolved optimizer section); schedule-free
    ones get `warmup_steps` as their own warmup."""
    return OPTIMIZERS[cfg.name].build(groups, optimizer_settings(cfg), warmup_steps)


# The searched optimizer values a param group holds (beside lr): those a resumed state takes
# from the trial's own spec rather than from the checkpoint.
HYPERPARAMETERS = ("betas", "momentum", "weight_decay", "eps")


def adopt_hyperparameters(optimizer: torch.optim.Optimizer, fresh: list[dict[str, Any]],
                          schedule: Any = None) -> None:
    """After `optimizer.load_state_dict` of another configuration's state (PBT's exploit hands
    a trial the checkpoint of a better one, with its own perturbed values): the values of the
    trial's spec (`fresh`: its freshly built param groups, taken before the load), the moments
    and step counts kept. The lr keeps its place on the loaded schedule, scaled by the new
    base lr over the loaded one. With the same spec (a plain resume) nothing changes."""
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        old_base = group.get("initial_lr", group["lr"])
        new_base = new.get("initial_lr", new["lr"])
        group["lr"] = group["lr"] * new_base / old_base
        if "initial_lr" in group:
            group["initial_lr"] = new_base
        for key in HYPERPARAMETERS:
            if key in new:
                group[key] = new[key]
    if schedule is not None and hasattr(schedule, "base_lrs"):
        schedule.base_lrs = [g.get("initial_lr", g["lr"]) for g in fresh]
