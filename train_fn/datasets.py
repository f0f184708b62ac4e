"""Dataset formats: where the cases are, what the channels and labels mean, which regions are
scored, and a check pass that finds bad files before any training starts.

Formats (`data.source`):
- `segthor`: `<root>/train/Patient_XX/{Patient_XX,GT}.nii.gz`, labels 1-4 (esophagus, heart,
  trachea, aorta);
- `msd`: a Medical Segmentation Decathlon folder, `<root>/dataset.json` with `imagesTr/` (3D,
  or 4D with one channel per modality) and `labelsTr/`;
- `folder`: image/label pairs matched by `data.image_pattern` and `data.label_pattern`, two
  paths relative to root with one `{case}` wildcard each, e.g. `images/{case}_ct.nii.gz`;
- `phantom` / `brats_phantom`: the built-in synthetic thorax CT (SegTHOR layout) and brain
  tumour MRI (MSD layout), generated once into the cache folder.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from train_fn.errors import DataError
from train_fn.phantom import write_phantom_dataset
from train_fn.phantom_msd import MODALITIES, write_msd_phantom

if TYPE_CHECKING:
    from search.spec import DataSpec

SEGTHOR_LABELS = {1: "esophagus", 2: "heart", 3: "trachea", 4: "aorta"}




@dataclass(frozen=True)
class Case:
    case_id: str
    image: str
    label: str


@dataclass(frozen=True)
class Dataset:
    """What a trial needs to know about the data besides the voxels."""

    root: str
    cases: tuple[Case, ...]
    channels: tuple[str, ...]  # one name per input channel (modality)
    labels: dict[int, str]  # foreground label id -> name (the network's classes)
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)  # scored name -> ids

    @property
    def num_classes(self) -> int:
        """Output channels of the network: background and every label id up to the largest."""
        return max(self.labels) + 1

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise DataError(f"{self.root}: no case {case_id!r} (the split names a case the "
                        "folder does not have)")

    def subset(self, ids: list[str]) -> list[Case]:
        return [self.case(i) for i in ids]


def default_cache_dir() -> Path:
    """Where generated data and preprocessed volumes are cached: $SEGTUNE_CACHE, else
    ~/.cache/segtune."""
    return Path(os.environ.get("SEGTUNE_CACHE", Path.home() / ".cache" / "segtune"))


def dataset_root(data: DataSpec) -> Path:
    """The dataset folder: the user's, or the phantom's cache (generated on first use)."""
    if data.source == "phantom":
        root = Path(data.root).expanduser() if data.root else (
            default_cache_dir() / f"phantom-n{data.cases}-seed{data.split_seed}")
        return _generated(root, write_phantom_dataset, data)
    if data.source == "brats_phantom":
        root = Path(data.root).expanduser() if data.root else (
            default_cache_dir() / f"brats-phantom-n{data.cases}-seed{data.split_seed}")
        return _generated(root, write_msd_phantom, data)
    return Path(data.root).expanduser()


def _generated(root: Path, write: Any, data: DataSpec) -> Path:
    """`write(root, ...)` of a phantom, or one line naming `data.root` and why it cannot hold
    one (a file, a read-only folder, a full disk, a folder holding something else)."""
    try:
        return write(root, n_cases=data.cases, seed=data.split_seed)
    except ValueError as err:  # a folder holding other files or another phantom
        raise DataError(f"data.root {err}") from None
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(root) else ""
        raise DataError(f"data.root {root}: cannot write the phantom there: {reason}{where}; "
                        "choose a new or empty folder you may write, with free space") \
            from None


def find_cases(root: str | Path) -> list[Case]:
    """The labelled cases of a SegTHOR-layout folder, sorted by patient id."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise DataError(f"{root}: no train/ folder (expected train/Patient_XX/...)")
    cases = []
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        image = folder / f"{folder.name}.nii.gz"
        label = folder / "GT.nii.gz"
        if not image.is_file():
            raise DataError(f"{folder}: missing image {image.name}")
        if not label.is_file():
            raise DataError(f"{folder}: missing label GT.nii.gz")
        cases.append(Case(folder.name, str(image), str(label)))
    if not cases:
        raise DataError(f"{train}: no Patient_XX folders")
    return cases


def _msd(root: Path) -> tuple[list[Case], tuple[str, ...], dict[int, str]]:
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(f"{root}: no dataset.json (expected a Medical Segmentation Decathlon "
                        "folder: dataset.json, imagesTr/, labelsTr/)")
    try:
        meta = json.loads(path.read_text())
        modality = meta["modality"]
        labels = {int(k): str(v) for k, v in meta["labels"].items() if int(k) != 0}
        entries = meta["training"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: not a valid MSD dataset.json ({type(err).__name__}: {err}); "
                        "it needs modality, labels and training") from None
    channels = tuple(str(modality[k]) for k in sorted(modality, key=int))
    cases = []
    for i, entry in enumerate(entries):
        try:
            image, label = root / entry["image"], root / entry["label"]
        except (KeyError, TypeError):
            raise DataError(f"{path}: training[{i}] needs image and label") from None
        if not image.is_file():
            raise DataError(f"{image}: image listed in {path.name} training[{i}] is missing")
        if not label.is_file():
            raise DataError(f"{label}: label of {image.name} (training[{i}] in {path.name}) "
                            "is missing")
        case_id = re.sub(r"\.nii(\.gz)?$", "", image.name)
        cases.append(Case(case_id, str(image), str(label)))
    return cases, channels, labels


def _folder(root: Path, image_pattern: str, label_pattern: str) -> list[Case]:
    """Cases matched by `image_pattern`; each label path from `label_pattern` and the case id."""
    prefix, _, suffix = image_pattern.partition("{case}")
    matches = sorted(glob.glob(str(root / image_pattern.replace("{case}", "*"))))
    cases = []
    for image in matches:
        rel = Path(image).relative_to(root).as_posix()
        case_id = rel[len(prefix):len(rel) - len(suffix)]
        label = root / label_pattern.replace("{case}", case_id)
        if not label.is_file():
            raise DataError(f"{label}: label of {rel} is missing (data.label_pattern "
                            f"{label_pattern!r})")
        cases.append(Case(case_id, image, str(label)))
    return cases


def _channels_of(image: str) -> int:
    import nibabel as nib

    try:
        shape = nib.load(image).shape
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for a bad file
        raise DataError(f"{image}: unreadable image ({_reason(err)})") from None
    if len(shape) not in (3, 4):
        raise DataError(f"{image}: image has {len(shape)} dimensions; expected 3 (or 4 with "
                        "channels)")
    return 1 if len(shape) == 3 else int(shape[3])


def open_dataset(data: DataSpec, root: str | Path | None = None) -> Dataset:
    """The dataset of a `data` spec section (root resolved and phantoms generated unless
    `root` is given). Lists cases and resolves labels and regions; reads no voxels."""
    root = Path(root) if root is not None else dataset_root(data)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if data.source in ("segthor", "phantom"):
        cases, channels, labels = find_cases(root), ("CT",), dict(SEGTHOR_LABELS)
    elif data.source in ("msd", "brats_phantom"):
        cases, channels, labels = _msd(root)
    else:
        cases = _folder(root, data.image_pattern, data.label_pattern)
        channels = tuple(f"channel{i}" for i in range(_channels_of(cases[0].image))) \
            if cases else ()
        labels = {}
    if not cases:
        raise DataError(f"{root}: no cases found" + (
            f" (data.image_pattern {data.image_pattern!r})" if data.source == "folder" else ""))
    if data.labels:
        labels = {int(k): v for k, v in data.labels.items()}
    if not labels:
        raise DataError(f"{root}: data.labels is needed for a folder dataset, e.g. "
                        "{1: liver, 2: tumour}")
    if 0 in labels:
        raise DataError("data.labels: 0 is the background; list the foreground labels only")
    regions = {name: tuple(ids) for name, ids in (data.regions or {}).items()} or {
        name: (i,) for i, name in sorted(labels.items())}
    for name, ids in regions.items():
        unknown = sorted(set(ids) - set(labels))
        if unknown:
            raise DataError(f"data.regions.{name}: label(s) {unknown} are not among the "
                            f"dataset's labels {sorted(labels)} ({labels})")
    return Dataset(str(root), tuple(cases), channels, labels, regions)


def check_dataset(dataset: Dataset, limit: int = 10,
                  map_cases: Callable[..., list[str | None]] | None = None) -> None:
    """Read every image and label once and raise `DataError` listing each bad file: unreadable
    or truncated files, image/label shape or affine mismatch, wrong channel count, label
    values outside the declared labels. `map_cases(check_case, [(case, dataset), ...])`
    runs the checks (`search.prepare` spreads them over Ray tasks); here one by one."""
    pairs = [(c, dataset) for c in dataset.cases]
    found = map_cases(check_case, pairs) if map_cases else [check_case(*p) for p in pairs]
    problems = [p for p in found if p]
    if problems:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DataError(f"{dataset.root}: {len(problems)} of {len(dataset.cases)} cases "
                        f"failed the data check:\n  {shown}{more}")


def _read(path: str) -> tuple[Any, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return img, np.asanyarray(img.dataobj)  # reads (and decompresses) every byte


def check_case(case: Case, dataset: Dataset) -> str | None:
    """What is wrong with one case's files, or None."""
    try:
        image, voxels = _read(case.image)
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for a bad file
        return f"{case.image}: unreadable image ({_reason(err)})"
    try:
        label, values = _read(case.label)
    except Exception as err:  # noqa: BLE001 - as for the image
        return f"{case.label}: unreadable label ({_reason(err)})"
    for path, what, data in ((case.image, "an image", voxels), (case.label, "a label", values)):
        bad = _non_finite(data)
        if bad:
            return (f"{path}: {bad} non-finite voxels (NaN or infinite); {what} must hold "
                    "finite values")
    if image.ndim not in (3, 4):
        return f"{case.image}: image has {image.ndim} dimensions; expected 3 (or 4 with channels)"
    channels = 1 if image.ndim == 3 else image.shape[3]
    if channels != len(dataset.channels):
        return (f"{case.image}: {channels} channel(s), expected {len(dataset.channels)} "
                f"({', '.join(dataset.channels)})")
    if label.ndim != 3:
        return f"{case.label}: label has shape {label.shape}; expected 3 dimensions"
    if image.shape[:3] != label.shape:
        return (f"{case.label}: shape {label.shape} differs from its image's "
                f"{image.shape[:3]} ({Path(case.image).name})")
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        return (f"{case.label}: affine differs from its image's ({Path(case.image).name}): "
                f"spacing {_zooms(label)} vs {_zooms(image)}, origin "
                f"{np.round(label.affine[:3, 3], 2).tolist()} vs "
                f"{np.round(image.affine[:3, 3], 2).tolist()}")
    if not np.array_equal(values, np.round(values)):
        return f"{case.label}: label values are not integers"
    found = {int(v) for v in np.unique(values)}
    extra = sorted(found - set(dataset.labels) - {0})
    if extra:
        return (f"{case.label}: label values {extra} outside the declared labels "
                f"{[0, *sorted(dataset.labels)]}")
    return None


def _non_finite(data: np.ndarray) -> int:
    """How many voxels are NaN or infinite (integer volumes have none)."""
    if not np.issubdtype(data.dtype, np.inexact):
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _zooms(img) -> list[float]:
    return [round(float(z), 3) for z in img.header.get_zooms()[:3]]


def _reason(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def split_cases(
    case_ids: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """A deterministic patient-level split into train / val / test (each at least one case)."""
    ids = sorted(case_ids)
    if len(ids) < 3:
        raise DataError(f"need at least 3 cases for a train/val/test split, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = max(1, round(test_fraction * len(ids)))
    n_val = max(1, round(val_fraction * len(ids)))
    if n_test + n_val >= len(ids):
        raise DataError(f"{len(ids)} cases leave no training case after val/test")
    picked = [ids[i] for i in order]
    return {
        "train": sorted(picked[n_test + n_val:]),
        "val": sorted(picked[n_test:n_test + n_val]),
        "test": sorted(picked[:n_test]),
    }


def fold_splits(split: dict[str, list[str]], folds: int, seed: int
                ) -> list[dict[str, list[str]]]:
    """K patient-level folds over the train and val cases of `split` (its test cases stay
    held out): fold k validates on the k-th of K disjoint parts and trains on the rest."""
    pool = sorted(split["train"] + split["val"])
    if folds < 2 or folds > len(pool):
        raise DataError(f"{folds} folds need between 2 and {len(pool)} (the train and "
                        f"validation cases)")
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    parts = [sorted(order[k::folds]) for k in range(folds)]
    return [{"train": sorted(c for j, p in enumerate(parts) if j != k for c in p),
             "val": parts[k], "test": list(split["test"])} for k in range(folds)]


def io_shape(data: DataSpec) -> tuple[int, int]:
    """(input channels, output classes) of a data spec without generating or reading volumes
    (for `--dry-run`): the phantoms' are known; a folder's come from its labels/first image."""
    if data.source == "phantom" or (data.source == "segthor" and not data.labels):
        return 1, max(data.labels or SEGTHOR_LABELS) + 1
    if data.source == "brats_phantom":
        return len(MODALITIES), max(data.labels or {3: ""}) + 1
    dataset = open_dataset(data)
    return len(dataset.channels), dataset.num_classes
