from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from search.spec import Spec
from train_fn.data import DataError, PatchSampler, find_cases, load_volumes, split_cases
from train_fn.phantom import AORTA, ESOPHAGUS, HEART, TRACHEA, make_case, write_phantom_dataset


def test_phantom_looks_like_thorax_ct():
    image, label = make_case(0)
    assert set(np.unique(label)) == {0, ESOPHAGUS, HEART, TRACHEA, AORTA}
    counts = {c: int((label == c).sum()) for c in (ESOPHAGUS, HEART, TRACHEA, AORTA)}
    assert counts[HEART] > counts[AORTA] > counts[ESOPHAGUS]  # heart big, esophagus thin
    assert np.median(image[label == TRACHEA]) < -500  # air (blurred at the wall)
    eso, heart = np.median(image[label == ESOPHAGUS]), np.median(image[label == HEART])
    assert heart - eso > 60  # heart bright with contrast; esophagus low contrast
    # Cases differ in shape and position.
    _, other = make_case(1)
    assert (label == HEART).sum() != (other == HEART).sum()


def test_dataset_is_segthor_layout_and_reused(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", 4, seed=0)
    img = nib.load(root / "train" / "Patient_01" / "Patient_01.nii.gz")
    gt = nib.load(root / "train" / "Patient_01" / "GT.nii.gz")
    assert img.shape == gt.shape and np.allclose(img.header.get_zooms(), gt.header.get_zooms())
    stamp = (root / "train" / "Patient_01" / "GT.nii.gz").stat().st_mtime_ns
    assert write_phantom_dataset(tmp_path / "ph", 4, seed=0) == root
    assert (root / "train" / "Patient_01" / "GT.nii.gz").stat().st_mtime_ns == stamp
    assert json.loads((root / "phantom.json").read_text())["cases"] == 4
    with pytest.raises(ValueError, match="cases"):
        write_phantom_dataset(tmp_path / "ph", 5, seed=0)
    assert not list(tmp_path.glob(".*tmp*")) and not list((tmp_path).glob("ph.*"))


def test_split_is_patient_level_deterministic_and_disjoint():
    ids = [f"Patient_{i:02d}" for i in range(1, 21)]
    split = split_cases(ids, 0.2, 0.2, seed=0)
    assert split == split_cases(list(reversed(ids)), 0.2, 0.2, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(sum(split.values(), [])) == ids
    assert split != split_cases(ids, 0.2, 0.2, seed=1)
    with pytest.raises(ValueError, match="need at least 3 cases"):
        split_cases(ids[:2], 0.2, 0.2, 0)


def test_find_cases_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"no train/ folder"):
        find_cases(tmp_path)
    (tmp_path / "train" / "Patient_01").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Patient_01: missing image Patient_01.nii.gz"):
        find_cases(tmp_path)


def test_patches_are_batched_and_deterministic(phantom_root):
    spec = Spec()
    vols = load_volumes(find_cases(phantom_root)[:2], spec.data)
    assert 0.0 <= float(vols[0]["image"].min()) and float(vols[0]["image"].max()) <= 1.0
    sampler = PatchSampler(vols, (32, 32, 16), seed=0, num_classes=5)
    first = list(sampler.epoch(0, 3, 2))
    assert [tuple(x.shape) for x, _ in first] == [(2, 1, 32, 32, 16)] * 3
    again = list(sampler.epoch(0, 3, 2))
    assert all((a[1] == b[1]).all() for a, b in zip(first, again, strict=False))
    other = list(sampler.epoch(1, 3, 2))
    assert any((a[1] != b[1]).any() for a, b in zip(first, other, strict=False))
