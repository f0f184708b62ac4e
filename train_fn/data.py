"""Volumes and patches: the spec's preprocessing (cached on disk), and class-balanced training
patches. Which files and labels make a dataset is `train_fn.datasets`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from train_fn.datasets import (  # noqa: F401 - re-exported: the data API in one place
    Case,
    DataError,
    Dataset,
    check_dataset,
    dataset_root,
    default_cache_dir,
    find_cases,
    fold_splits,
    open_dataset,
    split_cases,
)

logger = logging.getLogger(__name__)


def _above_min(x):
    """Foreground for cropping: anything brighter than the darkest value (CT air outside the
    body, MR background)."""
    return x > x.min()


def preprocessing(data: Any, meta: bool = False):
    """The deterministic transforms from the spec: load (channels first), orientation,
    resampling, intensity (HU window or per-channel z-score), foreground crop. With `meta`,
    MetaTensors are kept so the spatial steps can be inverted (predictions)."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureTyped,
        Lambda,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    keys = ["image", "label"]
    steps = [LoadImaged(keys=keys, ensure_channel_first=True, image_only=True)]
    if data.orientation:
        steps.append(Orientationd(keys=keys, axcodes=data.orientation))
    if data.spacing:
        steps.append(Spacingd(keys=keys, pixdim=data.spacing, mode=("bilinear", "nearest")))
    if intensity(data) == "window":
        steps.append(ScaleIntensityRanged(keys="image", a_min=data.window[0],
                                          a_max=data.window[1], b_min=0.0, b_max=1.0,
                                          clip=True))
    else:
        steps.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    if data.crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key="image", select_fn=_above_min,
                                     margin=2, allow_smaller=True))
    if not meta:
        steps.append(Lambda(_record_spacing))  # a MONAI transform: cached with the rest
        steps.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(steps)


def intensity(data: Any) -> str:
    """`window` (CT in HU) unless set: `zscore` for the MR formats."""
    if data.intensity:
        return data.intensity
    return "zscore" if data.source in ("msd", "brats_phantom") else "window"


def _record_spacing(item: dict[str, Any]) -> dict[str, Any]:
    """Keeps the voxel spacing (mm) of the preprocessed image, for HD95."""
    item["spacing"] = tuple(float(s) for s in item["image"].pixdim[:3])
    return item


def _prep_key(data: Any, case: Case) -> str:
    """What the cached preprocessing of a case depends on: the settings and the files."""
    settings = [data.source, data.orientation, data.spacing, intensity(data),
                list(data.window), data.crop_foreground]
    stamps = [(os.path.getsize(p), os.stat(p).st_mtime_ns) for p in (case.image, case.label)]
    return json.dumps([_FORMAT, settings, stamps])


_FORMAT = 1  # bump when preprocessing changes, so stale caches are not reused


def load_volumes(cases: list[Case], data: Any, num_classes: int | None = None
                 ) -> list[dict[str, Any]]:
    """Each case preprocessed into (C, X, Y, Z) float `image` and (1, X, Y, Z) uint8 `label`
    tensors, with its `spacing`. Cached on disk (MONAI PersistentDataset) under
    `data.cache_dir` (default: the segtune cache) so later runs and trials reuse it; the cache
    key holds the preprocessing settings and the files' sizes and times."""
    import torch
    from monai.data import PersistentDataset

    transform = preprocessing(data)
    steps = [type(t).__name__ for t in transform.transforms]
    items = [{"image": c.image, "label": c.label, "case_id": c.case_id,
              "prep": _prep_key(data, c) + str(steps)} for c in cases]
    if data.cache:
        cache = Path(data.cache_dir).expanduser() if data.cache_dir else (
            default_cache_dir() / "preprocessed")
        cache.mkdir(parents=True, exist_ok=True)
        loaded = PersistentDataset(items, transform, cache_dir=cache, track_meta=True)
    else:
        loaded = [transform(dict(i)) for i in items]
    volumes = []
    for i in range(len(items)):
        item = loaded[i]
        label = item["label"].round().to(torch.uint8)
        if num_classes is not None and int(label.max()) >= num_classes:
            raise DataError(f"{items[i]['label']}: label values "
                            f"{torch.unique(label).tolist()} outside 0..{num_classes - 1}")
        volumes.append({"case_id": item["case_id"], "image": item["image"].float(),
                        "label": label, "spacing": tuple(item["spacing"])})
    return volumes


class PatchSampler:
    """Random training patches, balanced over background and every class, so a thin
    esophagus is seen as often as the heart. Deterministic for a given (seed, epoch)."""

    def __init__(self, volumes: list[dict[str, Any]], patch_size: tuple[int, int, int],
                 seed: int, num_classes: int):
        from monai.transforms import ClassesToIndicesd, RandCropByLabelClassesd

        index = ClassesToIndicesd(keys="label", num_classes=num_classes)
        self.volumes = [index(dict(v)) for v in volumes]
        self.crop = RandCropByLabelClassesd(
            keys=["image", "label"], label_key="label", spatial_size=patch_size,
            num_classes=num_classes, ratios=[1] * num_classes, num_samples=1,
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
