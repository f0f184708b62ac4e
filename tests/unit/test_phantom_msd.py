from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from train_fn.phantom_msd import (
    EDEMA,
    ENHANCING,
    MODALITIES,
    NON_ENHANCING,
    SHAPE,
    SPACING,
    make_case,
    write_msd_phantom,
)


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory):
    return write_msd_phantom(tmp_path_factory.mktemp("msd") / "Task01", 3, seed=0, n_test=1)


def test_layout_and_dataset_json_are_msd(msd_root):
    dataset = json.loads((msd_root / "dataset.json").read_text())
    assert {"name", "description", "tensorImageSize", "modality", "labels", "numTraining",
            "numTest", "training", "test"} <= set(dataset)
    assert dataset["tensorImageSize"] == "4D"
    assert dataset["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert dataset["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                                 "3": "enhancing tumour"}
    assert (dataset["numTraining"], dataset["numTest"]) == (3, 1)
    assert dataset["training"][0] == {"image": "./imagesTr/BRATS_001.nii.gz",
                                      "label": "./labelsTr/BRATS_001.nii.gz"}
    assert dataset["test"] == ["./imagesTs/BRATS_004.nii.gz"]  # MSD lists test images only
    for pair in dataset["training"]:
        assert (msd_root / pair["image"]).is_file() and (msd_root / pair["label"]).is_file()
    assert sorted(p.name for p in (msd_root / "imagesTr").iterdir()) == [
        "BRATS_001.nii.gz", "BRATS_002.nii.gz", "BRATS_003.nii.gz"]
    assert not (msd_root / "labelsTs").exists() and (msd_root / dataset["test"][0]).is_file()


def test_images_are_4d_labels_3d_with_the_spacing_in_the_affine(msd_root):
    img = nib.load(msd_root / "imagesTr" / "BRATS_001.nii.gz")
    lab = nib.load(msd_root / "labelsTr" / "BRATS_001.nii.gz")
    assert img.shape == (*SHAPE, 4) and lab.shape == SHAPE
    assert np.allclose(img.affine, np.diag([*SPACING, 1.0]))
    assert np.allclose(lab.affine, img.affine)
    assert np.allclose(img.header.get_zooms()[:3], SPACING)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, EDEMA, NON_ENHANCING, ENHANCING}


def test_monai_reads_the_modalities_as_channels(msd_root):
    from monai.transforms import LoadImage

    image = LoadImage(image_only=True, ensure_channel_first=True)(
        str(msd_root / "imagesTr" / "BRATS_001.nii.gz"))
    assert tuple(image.shape) == (4, *SHAPE)
    raw = np.asarray(nib.load(msd_root / "imagesTr" / "BRATS_001.nii.gz").dataobj)
    assert np.array_equal(np.asarray(image[2]), raw[..., 2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tumour_regions_are_nested(seed):
    _, label = make_case(seed)
    core, rim, edema = label == NON_ENHANCING, label == ENHANCING, label == EDEMA
    assert core.sum() > 50 and rim.sum() > 50 and edema.sum() > 200
    tumour = core | rim  # TC
    # The core touches only the enhancing rim; the tumour core touches only edema.
    assert not (binary_dilation(core) & ~tumour).any()
    assert not (binary_dilation(tumour) & (label == 0)).any()
    # One tumour: its bounding box is a small part of the volume.
    idx = np.argwhere(label > 0)
    assert (idx.max(0) - idx.min(0) + 1).prod() < 0.3 * label.size


def test_modalities_have_brats_like_contrasts():
    image, label = make_case(0)
    med = {m: [float(np.median(image[..., c][label == k])) for k in range(1, 4)]
           for c, m in enumerate(MODALITIES)}
    near = binary_dilation(label > 0, iterations=3) & (label == 0)  # brain around the tumour
    assert med["FLAIR"][0] > 1.3 * np.median(image[..., 0][near])  # edema bright on FLAIR
    edema, core, rim = med["t1gd"]
    assert rim > 1.5 * core and rim > 1.3 * edema  # enhancing rim bright on T1gd
    assert med["T1w"][2] < 0.8 * med["t1gd"][2]  # ... and not without gadolinium


def test_deterministic_by_seed_and_cases_differ():
    a, la = make_case(5)
    b, lb = make_case(5)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    _, lc = make_case(6)
    assert not np.array_equal(la, lc)


def test_modality_subset_and_errors(tmp_path):
    image, label = make_case(0, modalities=("FLAIR", "t1gd"))
    assert image.shape == (*SHAPE, 2)
    assert np.array_equal(label, make_case(0)[1])  # the same anatomy, fewer channels
    with pytest.raises(ValueError, match=r"modalities: \['PD'\] not among"):
        write_msd_phantom(tmp_path / "x", 2, modalities=("FLAIR", "PD"))
    with pytest.raises(ValueError, match="n_cases must be >= 1"):
        write_msd_phantom(tmp_path / "x", 0)
    assert not (tmp_path / "x").exists()


def test_written_once_reused_and_refused_when_different(msd_root, tmp_path):
    stamp = (msd_root / "labelsTr" / "BRATS_001.nii.gz").stat().st_mtime_ns
    assert write_msd_phantom(msd_root, 3, seed=0, n_test=1) == msd_root
    assert (msd_root / "labelsTr" / "BRATS_001.nii.gz").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"holds a different phantom \(seed 0 != 1\)"):
        write_msd_phantom(msd_root, 3, seed=1, n_test=1)
    small = write_msd_phantom(tmp_path / "s", 1, seed=0, modalities=("t1gd",), shape=(32, 32, 24))
    again = write_msd_phantom(tmp_path / "s2", 1, seed=0, modalities=("t1gd",),
                              shape=(32, 32, 24))
    a = np.asarray(nib.load(small / "imagesTr" / "BRATS_001.nii.gz").dataobj)
    b = np.asarray(nib.load(again / "imagesTr" / "BRATS_001.nii.gz").dataobj)
    assert a.shape == (32, 32, 24, 1) and np.array_equal(a, b)
    assert json.loads((small / "dataset.json").read_text())["modality"] == {"0": "t1gd"}
