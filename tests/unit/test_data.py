from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from search.spec import Spec
from train_fn.data import PatchSampler, load_volumes
from train_fn.datasets import DataError, find_cases, split_cases
from train_fn.phantom import (
    AORTA,
    ESOPHAGUS,
    HEART,
    MANIFEST,
    SPACING,
    TRACHEA,
    coverage,
    make_case,
    write_phantom_dataset,
)


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


def test_cases_vary_in_body_size_and_noise():
    bodies, noise = [], []
    for seed in range(6):
        image, _ = make_case(seed)
        bodies.append(int((image > -500).sum()))
        outside = image[:8, :8].astype(float)  # air in a corner: noise only
        noise.append(outside[outside > -1024].std())
    assert max(bodies) > 1.15 * min(bodies)
    assert max(noise) > 1.5 * min(noise)


def test_trachea_needs_the_air_end_of_the_window():
    from scipy.ndimage import binary_erosion, binary_fill_holes

    image, label = make_case(0)
    lumen = binary_erosion(label == TRACHEA, structure=np.ones((3, 3, 1)))  # away from its wall
    body = np.stack([binary_fill_holes(s) for s in np.moveaxis(image > -500, 2, 0)], axis=2)
    lung = (label == 0) & (image < -500) & body  # lungs and bronchi
    assert lumen.sum() > 30
    for (lo, hi), separable in [((-1000, 1000), True), ((-500, 500), False)]:
        windowed = np.clip((image.astype(float) - lo) / (hi - lo), 0, 1)
        below_lung = (windowed[lumen] < np.percentile(windowed[lung], 5)).mean()
        # Air (-1000 HU) is darker than lung (-850) only while the window keeps it.
        assert below_lung > 0.8 if separable else below_lung == 0.0


@pytest.mark.parametrize("z0, expected", [(10.0, [1.0, 10 / 7.5 - 0.5, 0.0]),
                                          (7.5, [1.0, 0.5, 0.0]), (3.75, [1.0, 0.0, 0.0])])
def test_coverage_is_the_voxel_fraction_inside(z0, expected):
    # Half-space z < z0 on 7.5 mm slices centred at 0, 7.5, 15 mm: the middle slice spans
    # 3.75-11.25 mm.
    z = (np.arange(3) * 7.5)[None, None, :]
    frac = coverage(np.broadcast_to(z - z0, (4, 4, 3)).astype(float), (3.0, 3.0, 7.5))
    assert np.allclose(frac[1, 1], expected, atol=1e-6)


def test_coverage_keeps_a_sphere_volume():
    spacing = (3.0, 3.0, 7.5)
    x, y, z = (np.arange(n)[tuple(slice(None) if i == d else None for i in range(3))] * s
               for d, (n, s) in enumerate(zip((24, 24, 10), spacing, strict=True)))
    r = np.sqrt((x - 35.2) ** 2 + (y - 36.1) ** 2 + (z - 37.0) ** 2)
    frac = coverage(np.broadcast_to(r - 25.0, (24, 24, 10)).astype(float), spacing)
    volume = frac.sum() * np.prod(spacing)
    assert abs(volume / (4 / 3 * np.pi * 25.0 ** 3) - 1) < 0.02
    assert ((frac > 0.05) & (frac < 0.95)).sum() > 100  # a mixed rim, not a hard mask


def test_dataset_is_segthor_layout_and_reused(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", 4, seed=0)
    img = nib.load(root / "train" / "Patient_01" / "Patient_01.nii.gz")
    gt = nib.load(root / "train" / "Patient_01" / "GT.nii.gz")
    assert img.shape == gt.shape and np.allclose(img.header.get_zooms(), gt.header.get_zooms())
    assert np.allclose(img.header.get_zooms(), SPACING)
    assert SPACING[2] / SPACING[0] == 2.5  # SegTHOR's in-plane : slice ratio
    stamp = (root / "train" / "Patient_01" / "GT.nii.gz").stat().st_mtime_ns
    assert write_phantom_dataset(tmp_path / "ph", 4, seed=0) == root
    assert (root / "train" / "Patient_01" / "GT.nii.gz").stat().st_mtime_ns == stamp
    assert json.loads((root / "phantom.json").read_text())["cases"] == 4
    with pytest.raises(ValueError, match="cases"):
        write_phantom_dataset(tmp_path / "ph", 5, seed=0)
    assert not list(tmp_path.glob(".*tmp*")) and not list((tmp_path).glob("ph.*"))


def test_a_phantom_of_another_format_is_written_again(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", 3, seed=0)
    old = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**old, "format": 0, "shape": [9, 9, 9]}))
    (root / "train" / "Patient_03" / "GT.nii.gz").unlink()
    assert write_phantom_dataset(tmp_path / "ph", 3, seed=0) == root
    assert json.loads((root / MANIFEST).read_text()) == old
    assert (root / "train" / "Patient_03" / "GT.nii.gz").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ph"]  # nothing stale left beside it


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
