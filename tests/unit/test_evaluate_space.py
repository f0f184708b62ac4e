"""`evaluate` and `predict` undo the spec's spatial preprocessing: a synthetic NIfTI dataset
(non-1 spacing that the spec resamples, a non-RAS orientation that it reorients, air around a
body that it crops) and an oracle 'network' that reads the labels off the preprocessed
intensities. Its predictions, back on the input's grid, must be the label voxel for voxel."""

from __future__ import annotations

import json
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch

from search.predict import Segmenter
from search.spec import load_spec

SPEC = """
data:
  source: folder
  root: {root}
  image_pattern: images/{{case}}.nii.gz
  label_pattern: labels/{{case}}.nii.gz
  labels: {{1: a, 2: b}}
  orientation: RAS
  spacing: [0.75, 1.0, 1.5]
  crop_foreground: true
model:
  channels: [4, 8]
  strides: [2]
optimizer:
  lr: 0.01
train:
  patch_size: [32, 32, 32]
  sw_batch_size: 1
  val_hd95: false
  device: cpu
"""
# Axes permuted and flipped (not RAS), spacing 2 x 1.5 x 3 mm, an origin away from 0.
AFFINE = np.array([[0.0, -1.5, 0.0, 30.0], [-2.0, 0.0, 0.0, 12.0], [0.0, 0.0, 3.0, -20.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (26, 30, 14)
# Body, a, b (air is -1000; the window [-1000, 1000] maps them to 0.5, 0.75, 0.25): an
# interpolated voxel between the body and an organ is never taken for the other organ.
HU = {0: 0.0, 1: 500.0, 2: -500.0}


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image HU, label): air, a body box off-centre (so the crop cuts unevenly), two organs
    apart (their mixture would look like body) at different places per case."""
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    image = np.full(SHAPE, -1000.0)
    image[3:22, 5:28, 2:12] = HU[0]
    for value, first in ((1, 4), (2, 13)):
        lo = [first + rng.integers(0, 3), rng.integers(6, 18), rng.integers(3, 6)]
        box = tuple(slice(a, a + n) for a, n in zip(lo, (6, 8, 5), strict=True))
        label[box] = value
    for value in (1, 2):
        image[label == value] = HU[value]
    return image.astype(np.int16), label


class Oracle(torch.nn.Module):
    """Logits from the windowed intensity: air (0) and body (0.5) are class 0, a (0.75) class
    1, b (0.25) class 2. What it predicts is where the preprocessing put the organs."""

    def forward(self, x):
        x = x[:, 0]
        background = torch.maximum(-x ** 2, -(x - 0.5) ** 2)
        return torch.stack([background, -(x - 0.75) ** 2, -(x - 0.25) ** 2], 1) * 1000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("spatial")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    cases = {}
    for i in range(3):
        image, label = _case(i)
        nib.save(nib.Nifti1Image(image, AFFINE), root / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labels" / f"c{i}.nii.gz")
        cases[f"c{i}"] = label
    (root / "spec.yaml").write_text(textwrap.dedent(SPEC.format(root=root)).lstrip())
    return root, cases


def _segmenter(root):
    spec = load_spec(root / "spec.yaml")
    return Segmenter("oracle", "none", spec, Oracle(), torch.device("cpu"), {1: "a", 2: "b"}, 1)


def test_the_spec_really_resamples_reorients_and_crops(dataset):
    from train_fn.data import preprocessing

    root, _ = dataset
    data = load_spec(root / "spec.yaml").data
    item = {"image": str(root / "images" / "c0.nii.gz"),
            "label": str(root / "labels" / "c0.nii.gz")}
    cropped = preprocessing(data)(dict(item))
    whole = preprocessing(data.model_copy(update={"crop_foreground": False}))(dict(item))
    # RAS swaps the first two axes (1.5 mm, 2 mm), each resampled to half its spacing ...
    assert whole["spacing"] == cropped["spacing"] == (0.75, 1.0, 1.5)
    assert tuple(whole["image"].shape[1:]) == (2 * 30 - 1, 2 * 26 - 1, 2 * 14 - 1)
    # ... and the crop to the body (plus a margin) cuts every axis.
    assert all(c < w for c, w in zip(cropped["image"].shape[1:], whole["image"].shape[1:],
                                      strict=True))


def test_predictions_are_in_the_inputs_own_grid_voxel_for_voxel(dataset, tmp_path):
    root, cases = dataset
    segmenter = _segmenter(root)
    for case_id, label in cases.items():
        src = root / "images" / f"{case_id}.nii.gz"
        out = tmp_path / f"{case_id}.nii.gz"
        labels = segmenter.predict_file(src, out)
        assert labels.shape == SHAPE
        np.testing.assert_array_equal(labels, label)
        written = nib.load(out)
        np.testing.assert_array_equal(written.affine, AFFINE)
        np.testing.assert_array_equal(np.asarray(written.dataobj), label)
        # An array with its affine takes the same path back.
        image = nib.load(src)
        np.testing.assert_array_equal(
            segmenter.predict(np.asarray(image.dataobj), affine=image.affine), label)


def test_evaluate_scores_its_predictions_against_the_labels_in_their_grid(dataset, tmp_path,
                                                                        monkeypatch):
    import search.evaluate
    from search.evaluate import evaluate_run

    root, cases = dataset
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text((root / "spec.yaml").read_text())
    (run / "run.json").write_text(json.dumps({
        "name": "run", "data_root": str(root),
        "split": {"train": [], "val": [], "test": sorted(cases)}}))
    monkeypatch.setattr(search.evaluate, "load_model", lambda run_dir, model: _segmenter(root))
    summary = evaluate_run(run)
    assert summary.segtune["cases"] == ["c0", "c1", "c2"]
    for entry in summary.metric_per_case:
        assert {r: s["Dice"] for r, s in entry["metrics"].items()} == {"a": 1.0, "b": 1.0}
        written = nib.load(entry["prediction_file"])
        np.testing.assert_array_equal(written.affine, AFFINE)
        reference = np.asarray(nib.load(entry["reference_file"]).dataobj)
        np.testing.assert_array_equal(np.asarray(written.dataobj), reference)
    assert summary.foreground_mean["Dice"] == 1.0
