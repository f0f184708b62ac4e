"""`predict` reads its inputs as nnU-Net names them: `<case>_0000.nii.gz` is channel 0 of case
`<case>` (output `<case>.nii.gz`), `_0001`, ... its other channels for a multi-channel model;
label files of the run's data layout given among the inputs are skipped with a line. Small
synthetic volumes and a tiny untrained network, as tests/unit/test_predict.py."""

from __future__ import annotations

import json
import textwrap

import nibabel as nib
import numpy as np
import pytest
from test_predict import AFFINE, run_dir, write_image  # noqa: F401 - run_dir is a fixture

from search.cli import main
from search.predict import group_cases, is_label_file, predict_files, skip_labels
from search.spec import load_spec
from search.spec.sections import DataSpec
from train_fn.checkpoint import save_checkpoint
from train_fn.models import architecture, build_model

MSD_SPEC = """
data:
  source: brats_phantom
  cases: 6
  spacing: [5.0, 4.0, 9.0]
model:
  name: unet
  channels: [4, 8]
  strides: [2]
  num_res_units: 0
optimizer:
  name: novograd
  lr: 0.02
train:
  patch_size: [16, 16, 8]
  sw_batch_size: 2
  device: cpu
"""


@pytest.fixture(scope="module")
def two_channel_run(tmp_path_factory):
    """A run folder of an MSD-layout dataset whose model takes 2 channels (its data folder
    gone: the channels and classes come from the checkpoint's architecture)."""
    run = tmp_path_factory.mktemp("runs") / "msd"
    run.mkdir()
    (run / "spec.yaml").write_text(textwrap.dedent(MSD_SPEC).lstrip())
    spec = load_spec(run / "spec.yaml")
    net = build_model(spec.model, 2, 3)
    save_checkpoint(run / "trial_a" / "checkpoint_000001", {
        "model": net.state_dict(), "config": spec.flat(),
        "architecture": architecture(spec.model, 2, 3)})
    split = {"train": ["a"], "val": ["b"], "test": ["c"]}
    (run / "run.json").write_text(json.dumps({"name": "msd", "split": split,
                                              "data_root": str(run / "gone")}))
    (run / "summary.json").write_text(json.dumps({"best": {
        "trial_id": "a", "config": {}, "checkpoint": "trial_a/checkpoint_000001"},
        "trials": [], "soups": None}))
    return run


def _labels(path):
    return np.asarray(nib.load(path).dataobj)


def test_channel_suffix_names_the_case_and_a_lone_number_does_not(run_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    write_image(folder / "Patient_41_0000.nii.gz", seed=3)
    write_image(folder / "Patient_0001.nii.gz", seed=4)  # a case id, not a channel
    written = predict_files(run_dir, [folder], tmp_path / "out")
    assert written == [tmp_path / "out" / "Patient_0001.nii.gz",
                       tmp_path / "out" / "Patient_41.nii.gz"]
    # The suffix only names the case: the same image without it gives the same labels.
    plain = write_image(tmp_path / "Patient_41.nii.gz", seed=3)
    again = predict_files(run_dir, [plain], tmp_path / "plain")
    assert np.array_equal(_labels(again[0]), _labels(written[1]))
    # --continue knows the case by its name without the suffix.
    assert predict_files(run_dir, [folder], tmp_path / "out", skip_existing=True) == []


def test_two_channel_files_for_a_one_channel_model_are_one_line(run_dir, tmp_path,  # noqa: F811
                                                                capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "b_0000.nii.gz")
    write_image(folder / "b_0001.nii.gz", seed=1)
    assert main(["predict", str(run_dir), "-i", str(folder), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == (f"segtune: error: --input: case b has the channel files _0000, _0001 "
                   f"({folder}, nnU-Net's _XXXX channel suffix); the run's model takes 1 "
                   "channel: give one file per case\n")
    assert not (tmp_path / "o").exists()


def test_channel_files_are_stacked_as_the_models_channels(two_channel_run, tmp_path):
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    flair, t1 = (rng.normal(0, 1, (20, 16, 10)).astype(np.float32) for _ in range(2))
    nib.save(nib.Nifti1Image(t1, AFFINE), folder / "BRATS_7_0001.nii.gz")
    nib.save(nib.Nifti1Image(flair, AFFINE), folder / "BRATS_7_0000.nii.gz")
    both = tmp_path / "BRATS_7.nii.gz"  # MSD's own layout: one 4D file, channels last
    nib.save(nib.Nifti1Image(np.stack([flair, t1], -1), AFFINE), both)
    assert [(c.name, [f.name for f in c.files]) for c in group_cases(
        sorted(folder.iterdir()), 2)] == [("BRATS_7", ["BRATS_7_0000.nii.gz",
                                                       "BRATS_7_0001.nii.gz"])]
    split = predict_files(two_channel_run, [folder], tmp_path / "out", probabilities=True)
    whole = predict_files(two_channel_run, [both], tmp_path / "whole", probabilities=True)
    assert split == [tmp_path / "out" / "BRATS_7.nii.gz"]
    assert np.array_equal(_labels(split[0]), _labels(whole[0]))
    np.testing.assert_array_equal(nib.load(split[0]).affine, AFFINE)
    # The channel order matters: swapped channels give other labels.
    nib.save(nib.Nifti1Image(t1, AFFINE), folder / "BRATS_7_0000.nii.gz")
    nib.save(nib.Nifti1Image(flair, AFFINE), folder / "BRATS_7_0001.nii.gz")
    swapped = predict_files(two_channel_run, [folder], tmp_path / "swapped")
    assert not np.array_equal(_labels(swapped[0]), _labels(whole[0]))
    prob = np.load(tmp_path / "out" / "BRATS_7.npz")["probabilities"]
    assert np.array_equal(prob, np.load(tmp_path / "whole" / "BRATS_7.npz")["probabilities"])


@pytest.mark.parametrize("files, message", [
    ({"c_0000": (20, 16, 10), "c_0002": (20, 16, 10)},
     "--input: case c has the channel files _0000, _0002 ({folder}, nnU-Net's _XXXX channel "
     "suffix); the run's model takes 2 channels: _0000 to _0001"),
    ({"c_0000": (20, 16, 10), "c_0001": (20, 16, 10), "c_0002": (20, 16, 10)},
     "--input: case c has the channel files _0000, _0001, _0002"),
    ({"c_0000": (20, 16, 10), "c_0001": (20, 16, 12)},
     "{folder}/c_0001.nii.gz: shape (20, 16, 12) and affine differ from c_0000.nii.gz's "
     "(20, 16, 10): the channel files of a case share one voxel grid"),
    ({"c_0000": (20, 16, 10, 2), "c_0001": (20, 16, 10)},
     "{folder}/c_0000.nii.gz: 2 channel(s), the run's model takes 1"),
])
def test_channel_files_that_are_not_the_models_channels_are_one_line(
        two_channel_run, tmp_path, capsys, files, message):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shape in files.items():
        write_image(folder / f"{name}.nii.gz", shape=shape)
    assert main(["predict", str(two_channel_run), "-i", str(folder), "-o",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtune: error: " + message.format(folder=folder)), err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_msd_label_files_among_the_inputs_are_skipped_with_a_line(two_channel_run, tmp_path,
                                                                  caplog):
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    write_image(images / "BRATS_9.nii.gz", shape=(20, 16, 10, 2))
    write_image(labels / "BRATS_9.nii.gz", shape=(20, 16, 10))
    with caplog.at_level("WARNING", logger="search.predict"):
        written = predict_files(two_channel_run, [images / "BRATS_9.nii.gz",
                                                  labels / "BRATS_9.nii.gz"],
                                tmp_path / "out")
    assert written == [tmp_path / "out" / "BRATS_9.nii.gz"]
    assert (f"skipped {labels / 'BRATS_9.nii.gz'}: a label file of the brats_phantom layout"
            in caplog.text)


@pytest.mark.parametrize("data, label, image", [
    ({"source": "segthor", "root": "/d"}, "/d/train/Patient_01/GT.nii.gz",
     "/d/train/Patient_01/Patient_01.nii.gz"),
    ({"source": "msd", "root": "/d"}, "/d/labelsTs/la_003.nii.gz", "/d/imagesTs/la_003.nii.gz"),
    ({"source": "folder", "root": "/d", "image_pattern": "scans/{case}.nii.gz",
      "label_pattern": "scans/{case}_seg.nii.gz"}, "/d/scans/k1_seg.nii.gz",
     "/d/scans/k1.nii.gz"),
    # Both patterns match the image: the one with more fixed text wins.
    ({"source": "folder", "root": "/d", "image_pattern": "img/{case}_ct.nii.gz",
      "label_pattern": "img/{case}.nii.gz"}, "/d/img/k1.nii.gz", "/d/img/k1_ct.nii.gz"),
])
def test_label_files_of_each_layout(data, label, image, tmp_path):
    spec = DataSpec(**data)
    assert is_label_file(label, spec) and not is_label_file(image, spec)
    paths = [tmp_path.joinpath(*p.strip("/").split("/")) for p in (label, image)]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert skip_labels(paths, spec) == [paths[1]]
