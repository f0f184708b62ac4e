"""Data: the SegTHOR layout (real or phantom), the patient-level split, volumes and patches.

Both the built-in phantom and a real SegTHOR folder are read the same way, from
`<root>/train/Patient_XX/Patient_XX.nii.gz` and `GT.nii.gz`, through MONAI transforms.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CLASS_NAMES = ("esophagus", "heart", "trachea", "aorta")  # SegTHOR labels 1..4
NUM_CLASSES = len(CLASS_NAMES) + 1  # with background


@dataclass(frozen=True)
class Case:
    case_id: str
    image: str
    label: str


def default_cache_dir() -> Path:
    """Where generated data is cached: $SEGTUNE_CACHE, else ~/.cache/segtune."""
    return Path(os.environ.get("SEGTUNE_CACHE", Path.home() / ".cache" / "segtune"))


def dataset_root(data: Any) -> Path:
    """The folder holding `train/`: the user's SegTHOR folder, or the phantom cache (generated
    on first use, reused after)."""
    if data.source == "segthor":
        return Path(data.root).expanduser()
    from train_fn.phantom import write_phantom_dataset

    root = Path(data.root).expanduser() if data.root else (
        default_cache_dir() / f"phantom-n{data.cases}-seed{data.split_seed}"
    )
    return write_phantom_dataset(root, n_cases=data.cases, seed=data.split_seed)


def find_cases(root: str | Path) -> list[Case]:
    """The labelled cases of a SegTHOR-layout folder, sorted by patient id."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{root}: no train/ folder (expected train/Patient_XX/...)")
    cases = []
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        image = folder / f"{folder.name}.nii.gz"
        label = folder / "GT.nii.gz"
        if not image.is_file():
            raise FileNotFoundError(f"{folder}: missing image {image.name}")
        if not label.is_file():
            raise FileNotFoundError(f"{folder}: missing label GT.nii.gz")
        cases.append(Case(folder.name, str(image), str(label)))
    if not cases:
        raise FileNotFoundError(f"{train}: no Patient_XX folders")
    return cases


def split_cases(
    case_ids: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """A deterministic patient-level split into train / val / test (each at least one case)."""
    ids = sorted(case_ids)
    if len(ids) < 3:
        raise ValueError(f"need at least 3 cases for a train/val/test split, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = max(1, round(test_fraction * len(ids)))
    n_val = max(1, round(val_fraction * len(ids)))
    if n_test + n_val >= len(ids):
        raise ValueError(f"{len(ids)} cases leave no training case after val/test")
    picked = [ids[i] for i in order]
    return {
        "train": sorted(picked[n_test + n_val:]),
        "val": sorted(picked[n_test:n_test + n_val]),
        "test": sorted(picked[:n_test]),
    }


def load_volumes(cases: list[Case], data: Any) -> list[dict[str, Any]]:
    """Read, optionally resample, and window each case into (1, X, Y, Z) tensors:
    `image` in [0, 1] from the spec's HU window, `label` as integer labels."""
    import torch
    from monai.transforms import (
        Compose,
        EnsureTyped,
        LoadImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    steps = [LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)]
    if data.spacing:
        steps.append(Spacingd(keys=["image", "label"], pixdim=data.spacing,
                              mode=("bilinear", "nearest")))
    steps += [
        ScaleIntensityRanged(keys="image", a_min=data.window[0], a_max=data.window[1],
                             b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]
    load = Compose(steps)
    volumes = []
    for case in cases:
        item = load({"image": case.image, "label": case.label})
        label = item["label"].round().to(torch.uint8)
        bad = torch.unique(label)
        if int(bad.max()) >= NUM_CLASSES:
            raise ValueError(f"{case.label}: label values {bad.tolist()} outside 0..4")
        volumes.append({"case_id": case.case_id, "image": item["image"].float(),
                        "label": label})
    return volumes


class PatchSampler:
    """Random training patches, balanced over background and the four classes, so the thin
    esophagus is seen as often as the heart. Deterministic for a given (seed, epoch)."""

    def __init__(self, volumes: list[dict[str, Any]], patch_size: tuple[int, int, int],
                 seed: int):
        from monai.transforms import ClassesToIndicesd, RandCropByLabelClassesd

        index = ClassesToIndicesd(keys="label", num_classes=NUM_CLASSES)
        self.volumes = [index(dict(v)) for v in volumes]
        self.crop = RandCropByLabelClassesd(
            keys=["image", "label"], label_key="label", spatial_size=patch_size,
            num_classes=NUM_CLASSES, ratios=[1] * NUM_CLASSES, num_samples=1,
            indices_key="label_cls_indices", allow_smaller=True, warn=False,
        )
        self.seed = seed

    def epoch(self, epoch: int, steps: int, batch_size: int):
        """Yield `steps` (image, label) batches of `batch_size` patches for one epoch."""
        import torch
        from monai.utils import convert_to_tensor

        rng = np.random.RandomState([self.seed, epoch])
        self.crop.set_random_state(state=rng)
        for _ in range(steps):
            picks = rng.randint(len(self.volumes), size=batch_size)
            patches = [self.crop(self.volumes[i])[0] for i in picks]
            image = torch.stack([convert_to_tensor(p["image"], track_meta=False) for p in patches])
            label = torch.stack([convert_to_tensor(p["label"], track_meta=False) for p in patches])
            yield image, label.long()
