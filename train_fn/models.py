"""Model registry: a name maps to a factory, the spec keys it takes with their defaults, and a
function placing each parameter on the U-shaped path from input to output.

Every parameter gets a *position* on that path, from which the layer-wise LR multipliers are
computed (see train_fn.optim): encoder level 0 .. D-1, the middle (bottom), decoder level
D-1 .. 0, then the head that emits the classes (deep-supervision heads included).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from search.spec import ModelSpec

ENCODER, MIDDLE, DECODER, HEAD = "encoder", "middle", "decoder", "head"


@dataclass(frozen=True)
class ModelDef:
    build: Callable[[dict[str, Any], int, int], Any]
    defaults: dict[str, Any]
    depth: Callable[[dict[str, Any]], int]  # D: the number of encoder levels above the middle
    place: Callable[[str, int], tuple[str, int]]  # parameter name, D -> (part, level)


# --- MONAI UNet ------------------------------------------------------------------------------
def _unet(o, cin, cout):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=cin, out_channels=cout, channels=o["channels"],
                strides=o["strides"], num_res_units=o["num_res_units"], dropout=o["dropout"])


def _unet_place(name: str, depth: int) -> tuple[str, int]:
    """UNet nests itself: `model.0` is the level-0 down block, `model.1.submodule` the next
    level, ..., the innermost `submodule` the bottom; `.2` is the up block of a level. The top
    up block (`model.2`) emits the classes: its last residual unit (`model.2.1`), or all of it
    without residual units, is the head."""
    rest = name.removeprefix("model.")
    level = 0
    while rest.startswith("1.submodule."):
        level += 1
        rest = rest.removeprefix("1.submodule.")
    first, _, tail = rest.partition(".")
    if level == depth or first not in ("0", "2"):
        return MIDDLE, depth
    if first == "0":
        return ENCODER, level
    if level == 0 and (tail.startswith("1.") or not tail.split(".")[0].isdigit()):
        return HEAD, 0
    return DECODER, level


def _module_index(name: str) -> tuple[str, int]:
    """`downsamples.1.conv.weight` -> ("downsamples", 1); `bottleneck.conv.weight` ->
    ("bottleneck", 0)."""
    head, _, rest = name.partition(".")
    first = rest.split(".")[0]
    return head, int(first) if first.isdigit() else 0


# --- MONAI DynUNet (nnU-Net's network) -----------------------------------------------------------
def _dynunet(o, cin, cout):
    from monai.networks.nets import DynUNet

    n = len(o["strides"])
    return DynUNet(spatial_dims=3, in_channels=cin, out_channels=cout,
                   kernel_size=[o["kernel_size"]] * n, strides=o["strides"],
                   upsample_kernel_size=o["strides"][1:], filters=o["channels"],
                   dropout=o["dropout"] or None, res_block=o["res_block"],
                   norm_name=(o["norm"], {"affine": True}),
                   deep_supervision=o["deep_supervision"], deep_supr_num=o["deep_supr_num"])


def _dynunet_place(name: str, depth: int) -> tuple[str, int]:
    head, index = _module_index(name)
    if head == "input_block":
        return ENCODER, 0
    if head == "downsamples":
        return ENCODER, index + 1
    if head == "bottleneck":
        return MIDDLE, depth
    if head == "upsamples":
        return DECODER, depth - 1 - index
    return HEAD, 0  # output_block, deep_supervision_heads.i


# --- MONAI SegResNet -------------------------------------------------------------------------
def _segresnet(o, cin, cout):
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=cin, out_channels=cout,
                     init_filters=o["init_filters"], blocks_down=o["blocks_down"],
                     blocks_up=o["blocks_up"], dropout_prob=o["dropout"] or None)


def _segresnet_place(name: str, depth: int) -> tuple[str, int]:
    head, index = _module_index(name)
    if head == "convInit":
        return ENCODER, 0
    if head == "down_layers":
        return (MIDDLE, depth) if index == depth else (ENCODER, index)
    if head in ("up_samples", "up_layers"):
        return DECODER, depth - 1 - index
    return HEAD, 0  # conv_final


# --- MONAI MedNeXt ---------------------------------------------------------------------------
def _mednext(o, cin, cout):
    from monai.networks.nets import MedNeXt

    return MedNeXt(spatial_dims=3, in_channels=cin, out_channels=cout,
                   init_filters=o["init_filters"], kernel_size=o["kernel_size"],
                   blocks_down=o["blocks_down"], blocks_bottleneck=o["blocks_bottleneck"],
                   blocks_up=o["blocks_up"], deep_supervision=o["deep_supervision"])


def _mednext_place(name: str, depth: int) -> tuple[str, int]:
    head, index = _module_index(name)
    if head in ("stem",):
        return ENCODER, 0
    if head in ("enc_stages", "down_blocks"):
        return ENCODER, index
    if head == "bottleneck":
        return MIDDLE, depth
    if head in ("up_blocks", "dec_stages"):
        return DECODER, depth - 1 - index
    return HEAD, 0  # out_0, out_blocks.i


MODELS: dict[str, ModelDef] = {
    "unet": ModelDef(_unet, {"channels": (8, 16, 32, 64), "strides": (2, 2, 2),
                             "num_res_units": 1, "dropout": 0.0},
                     depth=lambda o: len(o["strides"]), place=_unet_place),
    "dynunet": ModelDef(_dynunet, {"channels": (8, 16, 32, 64), "strides": (1, 2, 2, 2),
                                   "kernel_size": 3, "res_block": True, "dropout": 0.0,
                                   "norm": "instance",
                                   "deep_supervision": False, "deep_supr_num": 1},
                        depth=lambda o: len(o["strides"]) - 1, place=_dynunet_place),
    "segresnet": ModelDef(_segresnet, {"init_filters": 8, "blocks_down": (1, 2, 2, 4),
                                       "blocks_up": (1, 1, 1), "dropout": 0.0},
                          depth=lambda o: len(o["blocks_down"]) - 1, place=_segresnet_place),
    "mednext": ModelDef(_mednext, {"init_filters": 8, "kernel_size": 3,
                                   "blocks_down": (2, 2, 2), "blocks_bottleneck": 2,
                                   "blocks_up": (2, 2, 2), "deep_supervision": False},
                        depth=lambda o: len(o["blocks_down"]), place=_mednext_place),
}


def has_batchnorm(model: torch.nn.Module) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def refresh_batchnorm(model: torch.nn.Module, images, device=None) -> bool:
    """Recompute BatchNorm running statistics over `images` (an iterable of input batches),
    as a plain average: weights that were never trained as such (schedule-free's averaged
    point, a soup) have no statistics of their own. Returns whether there was any."""
    if not has_batchnorm(model):
        return False
    from torch.optim.swa_utils import update_bn

    update_bn(images, model, device=device)
    return True


def model_settings(cfg: ModelSpec) -> dict[str, Any]:
    """Every option the model takes: the spec's value, else the model's default."""
    defaults = MODELS[cfg.name].defaults
    return {k: (d if getattr(cfg, k) is None else getattr(cfg, k)) for k, d in defaults.items()}


def model_depth(cfg: ModelSpec) -> int:
    return MODELS[cfg.name].depth(model_settings(cfg))


def place_params(model: torch.nn.Module, cfg: ModelSpec) -> dict[str, tuple[str, int]]:
    """(part, level) of every parameter, by name."""
    place, depth = MODELS[cfg.name].place, model_depth(cfg)
    return {name: place(name, depth) for name, _ in model.named_parameters()}


def build_model(cfg: ModelSpec, in_channels: int, out_channels: int) -> torch.nn.Module:
    """The network of `cfg` (the spec's model section) with its weights drawn from
    `cfg.init_seed`, so every trial of a search starts from the same weights."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return MODELS[cfg.name].build(model_settings(cfg), in_channels, out_channels)


def architecture(cfg: ModelSpec, in_channels: int, out_channels: int) -> dict[str, Any]:
    """What must match for two checkpoints to be averaged."""
    return {"name": cfg.name, "in_channels": in_channels, "out_channels": out_channels,
            **{k: list(v) if isinstance(v, tuple) else v
               for k, v in model_settings(cfg).items() if k != "dropout"}}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights (used to prove that trials share their initial weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
