"""Segmentation metrics and full-volume evaluation."""

from __future__ import annotations

from typing import Any

import torch

from train_fn.data import CLASS_NAMES, NUM_CLASSES


def dice_per_class(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dice of each foreground class for one case, from (1, X, Y, Z) label maps.

    Convention: a class absent from both the prediction and the reference scores 1.0 (nothing
    to find, nothing found); absent from the reference but predicted scores 0.0.
    """
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    return compute_dice(
        one_hot(pred[None], NUM_CLASSES), one_hot(label[None].long(), NUM_CLASSES),
        include_background=False, ignore_empty=False,
    )[0]


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor, roi: tuple[int, int, int],
            sw_batch_size: int, overlap: float, device: torch.device) -> torch.Tensor:
    """Label map (1, X, Y, Z) of one (1, X, Y, Z) image by sliding-window inference."""
    from monai.inferers import sliding_window_inference

    logits = sliding_window_inference(
        image[None].to(device), roi, sw_batch_size, model, overlap=overlap
    )
    return logits.argmax(1).cpu()


def evaluate(model: torch.nn.Module, volumes: list[dict[str, Any]], train: Any,
             device: torch.device) -> tuple[float, dict[str, float]]:
    """Mean Dice over classes and Dice per class name, averaged over cases."""
    was_training = model.training
    model.eval()
    scores = torch.stack([
        dice_per_class(
            predict(model, v["image"], train.patch_size, train.sw_batch_size,
                    train.sw_overlap, device),
            v["label"],
        )
        for v in volumes
    ]).mean(0)
    model.train(was_training)
    per_class = {name: float(s) for name, s in zip(CLASS_NAMES, scores, strict=False)}
    return float(scores.mean()), per_class
