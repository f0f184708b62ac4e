"""Volumes and patches: the spec's preprocessing (cached on disk), and class-balanced training
patches. Which files and labels make a dataset is `train_fn.datasets`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from train_fn.datasets import Case, DataError, default_cache_dir

logger = logging.getLogger(__name__)


def _above_min(x):
    """Foreground for cropping: anything brighter than the darkest value (CT air outside the
    body, MR background)."""
    return x > x.min()


def preprocessing(data: Any, meta: bool = False, label: bool = True, load: bool = True):
    """The deterministic transforms from the spec: load (channels first), orientation,
    resampling, intensity (HU window or per-channel z-score), foreground crop. With `meta`,
    MetaTensors are kept so the spatial steps can be inverted (predictions). Without `label`
    only the image is transformed (an image with no labels); without `load` the image comes
    in as a channel-first MetaTensor carrying its affine instead of a file path."""
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

    keys = ["image", "label"] if label else ["image"]
    steps = [LoadImaged(keys=keys, ensure_channel_first=True, image_only=True)] if load else []
    if data.orientation:
        steps.append(Orientationd(keys=keys, axcodes=data.orientation))
    if data.spacing:
        steps.append(Spacingd(keys=keys, pixdim=data.spacing,
                              mode=("bilinear", "nearest")[:len(keys)]))
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
        steps.append(Lambda(_record_spacing))
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


_FORMAT = 2  # bump when preprocessing or the cache layout changes: stale entries are not reused
LOCATIONS_PER_CLASS = 10_000  # patch centres kept per class and case (as nnU-Net does)


def _prep_key(data: Any, case: Case) -> str:
    """What the cached preprocessing of a case depends on: the settings and the files (path,
    size, modification time)."""
    settings = [data.source, data.orientation, data.spacing, intensity(data),
                list(data.window), data.crop_foreground]
    stamps = [(str(Path(p).resolve()), os.path.getsize(p), os.stat(p).st_mtime_ns)
              for p in (case.image, case.label)]
    return json.dumps([_FORMAT, settings, stamps])


def cache_root(data: Any) -> Path:
    """The preprocessed-volume cache: `data.cache_dir`, else `$SEGTUNE_CACHE/preprocessed`."""
    return Path(data.cache_dir).expanduser() if data.cache_dir else (
        default_cache_dir() / "preprocessed")


def cache_entry(data: Any, case: Case) -> Path:
    """The cache folder of one case under these settings (it may not exist yet)."""
    digest = hashlib.sha1(_prep_key(data, case).encode()).hexdigest()[:20]
    return cache_root(data) / f"{case.case_id}-{digest}"


def is_cached(data: Any, case: Case) -> bool:
    return (cache_entry(data, case) / "meta.json").is_file()


def preprocess_case(case: Case, data: Any) -> dict[str, Any]:
    """One case through the spec's preprocessing, in compact form: `image` (C, X, Y, Z)
    float16 (after the window or z-score: 0.5 HU steps in a 2000 HU window), `label`
    (1, X, Y, Z) uint8, `spacing` (mm), and `locations`: for each class present, up to
    LOCATIONS_PER_CLASS voxel coordinates (int32, a fixed random sample) to centre balanced
    patches on, instead of full int64 index lists."""
    item = preprocessing(data)({"image": case.image, "label": case.label})
    image = np.asarray(item["image"], dtype=np.float16)
    label = np.asarray(item["label"]).round()
    if label.min() < 0 or label.max() > 255:
        raise DataError(f"{case.label}: label values outside 0..255 after preprocessing")
    label = label.astype(np.uint8)
    return {"case_id": case.case_id, "image": image, "label": label,
            "spacing": tuple(item["spacing"]), "locations": class_locations(label[0])}


def class_locations(label: np.ndarray, per_class: int = LOCATIONS_PER_CLASS
                    ) -> dict[int, np.ndarray]:
    """For each label value present: up to `per_class` (N, 3) int32 voxel coordinates drawn
    uniformly (a fixed seed: the cache is deterministic)."""
    rng = np.random.default_rng(0)
    flat = label.reshape(-1)
    order = np.argsort(flat, kind="stable")  # voxels grouped by class, one pass
    bounds = np.searchsorted(flat[order], np.arange(int(flat.max()) + 2))
    out = {}
    for c in range(len(bounds) - 1):
        idx = order[bounds[c]:bounds[c + 1]]
        if len(idx) == 0:
            continue
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        out[c] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32)
    return out


def build_entry(case: Case, data: Any) -> Path:
    """Preprocess `case` into its cache folder unless it is there: `image.npy`, `label.npy`
    (memory-mappable), `locations.npz`, `meta.json` (last: its presence marks the entry
    whole). Written beside and renamed into place, so a crash leaves no half entry and two
    builders of one case both end with one whole copy."""
    entry = cache_entry(data, case)
    if (entry / "meta.json").is_file():
        return entry
    vol = preprocess_case(case, data)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        np.save(tmp / "image.npy", vol["image"])
        np.save(tmp / "label.npy", vol["label"])
        np.savez(tmp / "locations.npz", **{str(c): v for c, v in vol["locations"].items()})
        meta = {"case_id": case.case_id, "spacing": list(vol["spacing"]),
                "shape": list(vol["image"].shape), "label_max": int(vol["label"].max()),
                "image": case.image, "label": case.label,
                "built_by": f"{socket.gethostname()}:{os.getpid()}"}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:  # another builder finished first: keep its copy
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def open_entry(entry: Path) -> dict[str, Any]:
    """A cached case as read-only memory maps: every process on a node that opens it shares
    one copy in the page cache (nnU-Net reads its preprocessed arrays the same way)."""
    meta = json.loads((entry / "meta.json").read_text())
    with np.load(entry / "locations.npz") as z:
        locations = {int(c): z[c] for c in z.files}
    return {"case_id": meta["case_id"], "image": np.load(entry / "image.npy", mmap_mode="r"),
            "label": np.load(entry / "label.npy", mmap_mode="r"),
            "spacing": tuple(meta["spacing"]), "locations": locations,
            "label_max": meta["label_max"]}


def missing_from_cache(cases: list[Case], data: Any) -> list[Case]:
    """The cases whose preprocessed volumes are not cached yet (none when caching is off)."""
    return [c for c in cases if data.cache and not is_cached(data, c)]


def load_volumes(cases: list[Case], data: Any, num_classes: int | None = None
                 ) -> list[dict[str, Any]]:
    """Each case preprocessed: (C, X, Y, Z) float16 `image`, (1, X, Y, Z) uint8 `label`,
    `spacing` and class `locations`. With `data.cache` (the default) they are memory maps of
    the on-disk cache (built here for any case the driver did not build), shared by every
    trial on the node; without, arrays in this process."""
    volumes = []
    for case in cases:
        if data.cache:
            vol = open_entry(build_entry(case, data))
        else:
            vol = preprocess_case(case, data)
            vol["label_max"] = int(vol["label"].max())
        if num_classes is not None and vol["label_max"] >= num_classes:
            raise DataError(f"{case.label}: label values up to {vol['label_max']} outside "
                            f"0..{num_classes - 1}")
        volumes.append(vol)
    return volumes


def sample_workers(train: Any, resources: Any) -> int:
    """Background threads that crop patches: `train.sample_workers`, else one per two of the
    trial's CPUs (at least one, at most four). On an H200 (bench/RESULTS.md, "GPU"), the GPU
    example's bf16 step ran 25 steps/s cropping in the training thread and 54 with two threads,
    against 65 with every patch ready on the GPU."""
    if train.sample_workers is not None:
        return train.sample_workers
    return max(1, min(4, int(resources.cpu) // 2))


class PatchSampler:
    """Random training patches, balanced over background and every class present, so a thin
    esophagus is seen as often as the heart: a class is drawn uniformly, then a voxel of it
    (from the case's bounded sample of locations) as the patch centre, moved inwards so the
    patch fits (as MONAI's RandCropByLabelClassesd). A volume smaller than the patch is
    zero-padded.

    Batch `step` of `epoch` depends only on (seed, epoch, step), so the batches are the same
    whether they are cropped in the training thread (`workers=0`) or ahead of it by
    `workers` background threads (numpy copies and torch release the GIL). With `pin`, the
    batches are in pinned memory for asynchronous copies to the GPU."""

    def __init__(self, volumes: list[dict[str, Any]], patch_size: tuple[int, int, int],
                 seed: int, num_classes: int, workers: int = 0, pin: bool = False):
        self.volumes = volumes
        self.patch = tuple(int(p) for p in patch_size)
        self.seed = seed
        self.num_classes = num_classes
        self.workers = workers
        self.pin = pin

    def batch(self, epoch: int, step: int, batch_size: int):
        """The (image float32, label int64) batch number `step` of `epoch`."""
        import torch

        rng = np.random.default_rng([self.seed, epoch, step])
        picks = rng.integers(len(self.volumes), size=batch_size)
        images, labels = zip(*(self._crop(self.volumes[i], rng) for i in picks), strict=True)
        image = torch.from_numpy(np.stack(images))
        label = torch.from_numpy(np.stack(labels).astype(np.int64))
        if self.pin:
            image, label = image.pin_memory(), label.pin_memory()
        return image, label

    def _crop(self, vol: dict[str, Any], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
        locations = vol["locations"]
        classes = [c for c in sorted(locations) if c < self.num_classes]
        points = locations[classes[rng.integers(len(classes))]]
        centre = points[rng.integers(len(points))]
        shape = vol["image"].shape[1:]
        start = [min(max(int(c) - p // 2, 0), max(n - p, 0))
                 for c, p, n in zip(centre, self.patch, shape, strict=True)]
        box = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
        image = np.asarray(vol["image"][(slice(None), *box)], dtype=np.float32)
        label = np.array(vol["label"][(slice(None), *box)])
        if image.shape[1:] != self.patch:
            pad = [(0, 0)] + [(0, p - n) for p, n in zip(self.patch, image.shape[1:],
                                                          strict=True)]
            image, label = np.pad(image, pad), np.pad(label, pad)
        return image, label

    def epoch(self, epoch: int, steps: int, batch_size: int):
        """Yield `steps` (image, label) batches of `batch_size` patches for one epoch."""
        if self.workers <= 0:
            for step in range(steps):
                yield self.batch(epoch, step, batch_size)
            return
        ahead = 2 * self.workers  # batches in flight: bounded memory
        with ThreadPoolExecutor(self.workers, thread_name_prefix="patches") as pool:
            pending = deque(pool.submit(self.batch, epoch, s, batch_size)
                            for s in range(min(ahead, steps)))
            for step in range(steps):
                result = pending.popleft().result()
                if step + ahead < steps:
                    pending.append(pool.submit(self.batch, epoch, step + ahead, batch_size))
                yield result
