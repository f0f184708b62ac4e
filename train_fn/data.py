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
from typing import TYPE_CHECKING, Any

import numpy as np

from train_fn.datasets import Case, DataError, default_cache_dir

if TYPE_CHECKING:
    import torch

    from search.spec import DataSpec, ResourcesSpec, TrainSpec

logger = logging.getLogger(__name__)


def _above_min(x):
    """Foreground for cropping: anything brighter than the darkest value (CT air outside the
    body, MR background)."""
    return x > x.min()


def preprocessing(data: DataSpec, meta: bool = False, label: bool = True, load: bool = True):
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


def intensity(data: DataSpec) -> str:
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


def _prep_key(data: DataSpec, case: Case) -> str:
    """What the cached preprocessing of a case depends on: the settings and the files (path,
    size, modification time)."""
    settings = [data.source, data.orientation, data.spacing, intensity(data),
                list(data.window), data.crop_foreground]
    stamps = [(str(Path(p).resolve()), os.path.getsize(p), os.stat(p).st_mtime_ns)
              for p in (case.image, case.label)]
    return json.dumps([_FORMAT, settings, stamps])


def cache_root(data: DataSpec) -> Path:
    """The preprocessed-volume cache: `data.cache_dir`, else `$SEGTUNE_CACHE/preprocessed`."""
    return Path(data.cache_dir).expanduser() if data.cache_dir else (
        default_cache_dir() / "preprocessed")


def cache_entry(data: DataSpec, case: Case) -> Path:
    """The cache folder of one case under these settings (it may not exist yet)."""
    digest = hashlib.sha1(_prep_key(data, case).encode()).hexdigest()[:20]
    return cache_root(data) / f"{case.case_id}-{digest}"


def is_cached(data: DataSpec, case: Case) -> bool:
    """The case's entry is there and whole (the quick check: no hashing)."""
    return entry_problem(data, case) is None


def entry_problem(data: DataSpec, case: Case, deep: bool = False) -> str | None:
    """What is wrong with the case's cache entry (`MISSING` when there is none), or None:
    see `_entry_problem`."""
    return _entry_problem(cache_entry(data, case), _prep_key(data, case), deep)


MISSING = "not built yet"
_FILES = ("image.npy", "label.npy", "locations.npz")
_DTYPES = {"image.npy": np.float16, "label.npy": np.uint8}


def _sha256(path: Path) -> str:
    """The file's SHA-256 (stdlib, SHA-NI where the CPU has it: ~0.08 s for a SegTHOR-sized
    entry's 60 MB, bench/cache_hash.py)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _meta_checksum(meta: dict[str, Any]) -> str:
    fields = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _entry_problem(entry: Path, key: str, deep: bool = False) -> str | None:
    """What is wrong with a cache entry, or None when it proves to be what its key says:
    `meta.json` whole and unedited (its own checksum), built from these settings and files,
    each array file of the recorded size, shape and dtype, and with `deep` of the recorded
    SHA-256 (reads every byte: the driver checks so once per run, trials only the rest)."""
    if not (entry / "meta.json").is_file():
        return MISSING if not entry.exists() else "no meta.json (a half-written entry)"
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("checksum") != _meta_checksum(meta):
            return ("meta.json was edited or written without checksums (its checksum does "
                    "not match)")
    except (ValueError, AttributeError, OSError) as err:
        return f"meta.json cannot be read ({type(err).__name__})"
    if meta.get("key") != key:
        return "meta.json names other settings or input files than this entry's"
    for name in _FILES:
        path, recorded = entry / name, meta["files"].get(name, {})
        size = path.stat().st_size if path.is_file() else None
        if size != recorded.get("bytes"):
            return (f"{name} is {'missing' if size is None else f'{size} bytes'}, meta.json "
                    f"says {recorded.get('bytes')} bytes (truncated or replaced)")
        if name in _DTYPES:
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as err:
                return f"{name} cannot be read ({err})"
            shape = [1, *meta["shape"][1:]] if name == "label.npy" else meta["shape"]
            if arr.dtype != _DTYPES[name] or list(arr.shape) != shape:
                return f"{name} holds {arr.dtype} {list(arr.shape)}, not {shape}"
        if deep and _sha256(path) != recorded.get("sha256"):
            return f"{name} does not match its SHA-256 in meta.json (its content changed)"
    return None


def preprocess_case(case: Case, data: DataSpec) -> dict[str, Any]:
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


def build_entry(case: Case, data: DataSpec, deep: bool = False, check: bool = True) -> Path:
    """Preprocess `case` into its cache folder unless a whole entry is there (see
    `entry_problem`; `check=False`: the caller found it damaged or missing): `image.npy`,
    `label.npy` (memory-mappable), `locations.npz`, `meta.json` (last, with each file's size
    and SHA-256 and its own checksum). A damaged entry is rebuilt with a warning naming it.
    Written beside and renamed into place, so a crash leaves no half entry, a half entry in
    the way is replaced, and two builders of one case both end with one whole copy."""
    entry, key = cache_entry(data, case), _prep_key(data, case)
    if check:
        problem = _entry_problem(entry, key, deep)
        if problem is None:
            return entry
        if problem != MISSING:
            logger.warning("cache: %s: %s; rebuilding it", entry, problem)
    vol = preprocess_case(case, data)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    except OSError as err:
        raise _cache_error(entry, err) from None
    try:
        _write_entry(tmp, entry, key, case, vol)
    except OSError as err:  # a full disk (numpy: "N requested and M written"), read-only
        raise _cache_error(entry, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _cache_error(entry: Path, err: OSError) -> DataError:
    reason = (err.strerror or str(err)).lower()
    return DataError(f"data.cache_dir {entry.parent}: cannot write the cache entry "
                     f"{entry.name} ({reason}); free space there, set data.cache_dir to "
                     "another folder, or data.cache: false")


def _write_entry(tmp: Path, entry: Path, key: str, case: Case, vol: dict[str, Any]) -> None:
    """The entry's files into `tmp`, then `tmp` into place."""
    np.save(tmp / "image.npy", vol["image"])
    np.save(tmp / "label.npy", vol["label"])
    np.savez(tmp / "locations.npz", **{str(c): v for c, v in vol["locations"].items()})
    meta = {"case_id": case.case_id, "spacing": list(vol["spacing"]),
            "shape": list(vol["image"].shape), "label_max": int(vol["label"].max()),
            "image": case.image, "label": case.label, "key": key,
            "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                      for n in _FILES},
            "built_by": f"{socket.gethostname()}:{os.getpid()}"}
    meta["checksum"] = _meta_checksum(meta)
    (tmp / "meta.json").write_text(json.dumps(meta))
    _put_in_place(tmp, entry, key)


def _put_in_place(tmp: Path, entry: Path, key: str) -> None:
    """Rename the finished `tmp` to `entry`; a whole entry there (another builder's) is kept,
    anything else there (a half or damaged entry) is moved aside and removed."""
    for _ in range(3):
        try:
            os.rename(tmp, entry)
            return
        except OSError:
            if _entry_problem(entry, key, deep=True) is None:  # rare: worth the hashing
                return  # another builder finished first: keep its copy
        aside = Path(tempfile.mkdtemp(prefix=f".{entry.name}.bad-", dir=entry.parent))
        try:
            os.rename(entry, aside / "entry")
        except FileNotFoundError:
            pass  # another builder moved it first
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(tmp, entry)


def open_entry(entry: Path) -> dict[str, Any]:
    """A cached case as read-only memory maps: every process on a node that opens it shares
    one copy in the page cache (nnU-Net reads its preprocessed arrays the same way). Open
    only an entry that `build_entry` has checked."""
    meta = json.loads((entry / "meta.json").read_text())
    with np.load(entry / "locations.npz") as z:
        locations = {int(c): z[c] for c in z.files}
    return {"case_id": meta["case_id"], "image": np.load(entry / "image.npy", mmap_mode="r"),
            "label": np.load(entry / "label.npy", mmap_mode="r"),
            "spacing": tuple(meta["spacing"]), "locations": locations,
            "label_max": meta["label_max"]}


def missing_from_cache(cases: list[Case], data: DataSpec) -> list[Case]:
    """The cases whose preprocessed volumes are not cached yet (none when caching is off)."""
    return [c for c in cases if data.cache and not is_cached(data, c)]


def load_volumes(cases: list[Case], data: DataSpec, num_classes: int | None = None,
                 deep: bool = False) -> list[dict[str, Any]]:
    """Each case preprocessed: (C, X, Y, Z) float16 `image`, (1, X, Y, Z) uint8 `label`,
    `spacing` and class `locations`. With `data.cache` (the default) they are memory maps of
    the on-disk cache (built here for any case the driver did not build), shared by every
    trial on the node; without, arrays in this process. Each entry is checked first (its
    hashes too with `deep`) and rebuilt if damaged."""
    volumes = []
    for case in cases:
        if data.cache:
            vol = open_entry(build_entry(case, data, deep))
        else:
            vol = preprocess_case(case, data)
            vol["label_max"] = int(vol["label"].max())
        if num_classes is not None and vol["label_max"] >= num_classes:
            raise DataError(f"{case.label}: label values up to {vol['label_max']} outside "
                            f"0..{num_classes - 1}")
        volumes.append(vol)
    return volumes


def sample_workers(train: TrainSpec, resources: ResourcesSpec) -> int:
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

    def batch(self, epoch: int, step: int, batch_size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
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
