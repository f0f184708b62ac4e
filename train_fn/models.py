"""Model registry: a name maps to a factory taking the model section of the spec."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def build_unet(cfg: Any, in_channels: int, out_channels: int) -> torch.nn.Module:
    """MONAI 3D UNet (residual units, instance norm)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(cfg.channels),
        strides=tuple(cfg.strides),
        num_res_units=cfg.num_res_units,
        dropout=cfg.dropout,
    )


MODELS = {"unet": build_unet}


def build_model(cfg: Any, in_channels: int, out_channels: int) -> torch.nn.Module:
    """The network of `cfg` (the spec's model section) with its weights drawn from
    `cfg.init_seed`, so every trial of a search starts from the same weights."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return MODELS[cfg.name](cfg, in_channels, out_channels)


def architecture(cfg: Any, in_channels: int, out_channels: int) -> dict[str, Any]:
    """What must match for two checkpoints to be averaged."""
    return {
        "name": cfg.name,
        "channels": list(cfg.channels),
        "strides": list(cfg.strides),
        "num_res_units": cfg.num_res_units,
        "in_channels": in_channels,
        "out_channels": out_channels,
    }


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights (used to prove that trials share their initial weights)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
