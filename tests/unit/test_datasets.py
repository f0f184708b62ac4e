"""Dataset formats, the check pass over bad data (each error by its message), preprocessing
and its cache, folds."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from search.spec import DataSpec
from train_fn.data import load_volumes
from train_fn.datasets import DataError, check_dataset, fold_splits, open_dataset

SHAPE = (12, 10, 8)


def save(path, array, spacing=(1.0, 1.0, 2.5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


def case_arrays(seed: int, channels: int = 1):
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    label[3:8, 3:7, 2:6] = 1
    label[5:7, 4:6, 3:5] = 2
    image = rng.normal(0, 1, (*SHAPE, channels)).astype(np.float32) + 3 * label[..., None]
    return (image[..., 0] if channels == 1 else image), label


def folder_dataset(root, n=4):
    for i in range(n):
        image, label = case_arrays(i)
        save(root / "images" / f"c{i}_ct.nii.gz", image)
        save(root / "labels" / f"c{i}_seg.nii.gz", label)
    return DataSpec(source="folder", root=str(root), image_pattern="images/{case}_ct.nii.gz",
                    label_pattern="labels/{case}_seg.nii.gz", labels={1: "organ", 2: "lesion"},
                    cache=False)


def msd_dataset(root, n=4, channels=2):
    training = []
    for i in range(n):
        image, label = case_arrays(i, channels)
        save(root / "imagesTr" / f"T_{i:03d}.nii.gz", image)
        save(root / "labelsTr" / f"T_{i:03d}.nii.gz", label)
        training.append({"image": f"./imagesTr/T_{i:03d}.nii.gz",
                         "label": f"./labelsTr/T_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "T", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "core"},
        "numTraining": n, "training": training}))
    return DataSpec(source="msd", root=str(root), cache=False,
                    regions={"core": (2,), "whole": (1, 2)})


def test_folder_pairs_by_pattern(tmp_path):
    ds = open_dataset(folder_dataset(tmp_path))
    assert [c.case_id for c in ds.cases] == ["c0", "c1", "c2", "c3"]
    assert ds.cases[0].label.endswith("labels/c0_seg.nii.gz")
    assert ds.channels == ("channel0",) and ds.num_classes == 3
    assert ds.regions == {"organ": (1,), "lesion": (2,)}
    check_dataset(ds)


def test_msd_reads_dataset_json_modalities_and_regions(tmp_path):
    ds = open_dataset(msd_dataset(tmp_path))
    assert ds.channels == ("FLAIR", "T1w") and ds.labels == {1: "edema", 2: "core"}
    assert ds.regions == {"core": (2,), "whole": (1, 2)}
    check_dataset(ds)
    vols = load_volumes(ds.subset(["T_000"]), msd_dataset(tmp_path))
    image = vols[0]["image"]
    assert tuple(image.shape) == (2, *SHAPE) and vols[0]["spacing"] == (1.0, 1.0, 2.5)
    # z-score per channel over the non-zero voxels
    assert abs(float(image[0][image[0] != 0].mean())) < 1e-4


@pytest.mark.parametrize("spec, message", [
    (dict(labels=None), "data.labels is needed for a folder dataset"),
    (dict(regions={"x": (1, 7)}), "data.regions.x: label(s) [7] are not among the dataset's "
                                  "labels [1, 2]"),
    (dict(labels={0: "bg", 1: "organ"}), "data.labels: 0 is the background"),
    (dict(image_pattern="nothing/{case}.nii.gz"), "no cases found (data.image_pattern "
                                                  "'nothing/{case}.nii.gz')"),
])
def test_folder_spec_errors(tmp_path, spec, message):
    base = folder_dataset(tmp_path)
    with pytest.raises(DataError, match=None) as err:
        open_dataset(base.model_copy(update=spec))
    assert message in str(err.value)


def test_missing_label_file_is_named(tmp_path):
    spec = folder_dataset(tmp_path)
    (tmp_path / "labels" / "c2_seg.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labels/c2_seg.nii.gz: label of images/c2_ct.nii.gz "
                                        r"is missing"):
        open_dataset(spec)


def test_msd_errors_name_the_file(tmp_path):
    spec = msd_dataset(tmp_path)
    (tmp_path / "imagesTr" / "T_001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"T_001.nii.gz: image listed in dataset.json "
                                        r"training\[1\] is missing"):
        open_dataset(spec)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(DataError, match=r"dataset.json: not a valid MSD dataset.json"):
        open_dataset(spec)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"no dataset.json"):
        open_dataset(spec)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    spec = DataSpec(source="folder", root=str(tmp_path / "empty"), labels={1: "a"},
                    image_pattern="{case}.nii.gz", label_pattern="{case}_seg.nii.gz")
    with pytest.raises(DataError, match=r"empty: no cases found"):
        open_dataset(spec)


def _break(kind: str, root):
    image = root / "images" / "c1_ct.nii.gz"
    label = root / "labels" / "c1_seg.nii.gz"
    if kind == "shape":
        save(label, np.zeros((12, 10, 7), np.uint8))
    elif kind == "affine":
        save(label, case_arrays(1)[1], spacing=(1.0, 1.0, 3.0))
    elif kind == "truncated":
        data = label.read_bytes()
        label.write_bytes(data[: len(data) // 2])
    elif kind == "not nifti":
        image.write_bytes(gzip.compress(b"not an image"))
    elif kind == "values":
        bad = case_arrays(1)[1]
        bad[0, 0, 0] = 7
        save(label, bad)
    elif kind == "channels":
        save(image, np.zeros((*SHAPE, 3), np.float32))
    elif kind == "float labels":
        save(label, case_arrays(1)[1].astype(np.float32) + 0.5)
    elif kind == "nan":
        bad = case_arrays(1)[0]
        bad[0, 0, :2], bad[1, 1, 1] = np.nan, np.inf
        save(image, bad)
    elif kind == "nan label":
        bad = case_arrays(1)[1].astype(np.float32)
        bad[2, 2, 2] = np.nan
        save(label, bad)
    elif kind == "2d":
        save(image, np.zeros((12, 10), np.float32))


@pytest.mark.parametrize("kind, message", [
    ("shape", "c1_seg.nii.gz: shape (12, 10, 7) differs from its image's (12, 10, 8) "
              "(c1_ct.nii.gz)"),
    ("affine", "c1_seg.nii.gz: affine differs from its image's (c1_ct.nii.gz): spacing "
               "[1.0, 1.0, 3.0] vs [1.0, 1.0, 2.5]"),
    ("truncated", "c1_seg.nii.gz: unreadable label ("),
    ("not nifti", "c1_ct.nii.gz: unreadable image ("),
    ("values", "c1_seg.nii.gz: label values [7] outside the declared labels [0, 1, 2]"),
    ("channels", "c1_ct.nii.gz: 3 channel(s), expected 1 (channel0)"),
    ("float labels", "c1_seg.nii.gz: label values are not integers"),
    ("nan", "c1_ct.nii.gz: 3 non-finite voxels (NaN or infinite); an image must hold finite "
            "values"),
    ("nan label", "c1_seg.nii.gz: 1 non-finite voxels (NaN or infinite); a label must hold "
                  "finite values"),
    ("2d", "c1_ct.nii.gz: image has 2 dimensions; expected 3 (or 4 with channels)"),
])
def test_check_pass_names_each_bad_file(tmp_path, kind, message):
    spec = folder_dataset(tmp_path)
    _break(kind, tmp_path)
    ds = open_dataset(spec)
    with pytest.raises(DataError) as err:
        check_dataset(ds)
    text = str(err.value)
    assert text.startswith(f"{tmp_path}: 1 of 4 cases failed the data check:")
    assert message in text, text


@pytest.mark.parametrize("content, message", [
    (np.zeros((12, 10), np.float32), "image has 2 dimensions; expected 3 (or 4 with channels)"),
    (None, "unreadable image ("),
])
def test_a_folder_datasets_first_image_is_checked_for_its_channels(tmp_path, content, message):
    spec = folder_dataset(tmp_path)
    first = tmp_path / "images" / "c0_ct.nii.gz"
    if content is None:
        first.write_bytes(gzip.compress(b"not an image"))
    else:
        save(first, content)
    with pytest.raises(DataError) as err:
        open_dataset(spec)
    assert str(err.value).startswith(f"{first}: {message}"), str(err.value)


def test_bad_data_stops_the_cli_before_anything_runs(tmp_path):
    from helpers import ROOT, cli

    spec = folder_dataset(tmp_path / "data", n=6)
    _break("values", tmp_path / "data")
    args = ["run", str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(tmp_path / "runs")]
    for key in ("source", "root", "image_pattern", "label_pattern"):
        args += ["--set", f"data.{key}={getattr(spec, key)}"]
    args += ["--set", "data.labels={1: organ, 2: lesion}"]
    proc = cli(*args)  # the data check runs as Ray tasks
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "1 of 6 cases failed the data check" in err and "c1_seg.nii.gz: label values [7]" in err
    assert not (tmp_path / "runs").exists()


def test_preprocessing_resamples_reorients_crops_and_caches(tmp_path):
    spec = folder_dataset(tmp_path / "data").model_copy(update={
        "spacing": (2.0, 2.0, 2.5), "orientation": "LPS", "crop_foreground": True,
        "cache": True, "cache_dir": str(tmp_path / "cache"), "intensity": "zscore"})
    ds = open_dataset(spec)
    first = load_volumes(ds.cases[:2], spec, ds.num_classes)
    assert first[0]["spacing"] == pytest.approx((2.0, 2.0, 2.5))
    assert first[0]["image"].shape[1:] == first[0]["label"].shape[1:]
    assert first[0]["image"].shape[1] <= 6  # 12 voxels at 1 mm -> 6 at 2 mm
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 2
    again = load_volumes(ds.cases[:2], spec, ds.num_classes)
    assert sorted((tmp_path / "cache").iterdir()) == cached
    assert all((a["image"] == b["image"]).all() for a, b in zip(first, again, strict=True))
    # Other settings: a new cache entry, never a stale volume (a rewritten file: test_cache).
    other = load_volumes(ds.cases[:1], spec.model_copy(update={"spacing": (1.0, 1.0, 2.5)}))
    new = sorted(set((tmp_path / "cache").iterdir()) - set(cached))
    assert len(new) == 1 and new[0].name.startswith(ds.cases[0].case_id)
    assert other[0]["spacing"] == pytest.approx((1.0, 1.0, 2.5))
    assert other[0]["image"].shape[1] > first[0]["image"].shape[1]  # 1 mm, not 2 mm voxels


def test_folds_are_disjoint_cover_train_and_val_and_keep_test(tmp_path):
    split = {"train": [f"p{i}" for i in range(7)], "val": ["p7", "p8"], "test": ["p9"]}
    folds = fold_splits(split, 3, seed=0)
    assert len(folds) == 3 and folds == fold_splits(split, 3, seed=0)
    vals = [f["val"] for f in folds]
    assert sorted(sum(vals, [])) == sorted(split["train"] + split["val"])
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and f["test"] == ["p9"]
        assert sorted(f["train"] + f["val"]) == sorted(split["train"] + split["val"])
    with pytest.raises(DataError, match="10 folds need between 2 and 9"):
        fold_splits(split, 10, 0)
