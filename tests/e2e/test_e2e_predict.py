"""`predict` on a finished search, through the real CLI: the same labels as `evaluate` voxel
for voxel, from a folder or from files, and from Python on an array."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import cli

from search.cli import main

pytestmark = pytest.mark.e2e
LABEL_IDS = {0, 1, 2, 3, 4}


def images(run_dir, split):
    """{case id: image file} of a split of the run (SegTHOR layout)."""
    run = json.loads((run_dir / "run.json").read_text())
    return {c: f"{run['data_root']}/train/{c}/{c}.nii.gz" for c in run["split"][split]}


def same_file(a, b):
    """Equal voxels, equal affines."""
    a, b = nib.load(a), nib.load(b)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.affine, b.affine)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_predict_gives_evaluates_labels_voxel_for_voxel(smoke_run, tmp_path):
    _, run_dir, _ = smoke_run
    # The best trial on the test images, each named as a file.
    proc = cli("evaluate", str(run_dir), "--out", str(tmp_path / "eval-best"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = images(run_dir, "test")
    proc = cli("predict", str(run_dir), "--input", *test.values(), "--output",
               str(tmp_path / "best"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(tmp_path / "best" / f"{c}.nii.gz") for c in test]
    for case, image in test.items():
        same_file(tmp_path / "best" / f"{case}.nii.gz",
                  tmp_path / "eval-best" / "predictions" / f"{case}.nii.gz")
        pred, src = nib.load(tmp_path / "best" / f"{case}.nii.gz"), nib.load(image)
        assert pred.shape == src.shape
        np.testing.assert_array_equal(pred.affine, src.affine)

    # The greedy soup on the training images (four cases), from a folder of them.
    train = images(run_dir, "train")
    folder = tmp_path / "in"
    folder.mkdir()
    for image in train.values():
        shutil.copy(image, folder)
    (folder / "README.txt").write_text("not an image: skipped")
    proc = cli("evaluate", str(run_dir), "--model", "greedy", "--split", "train", "--out",
               str(tmp_path / "eval-greedy"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["predict", str(run_dir), "-i", str(folder), "-o", str(tmp_path / "greedy"),
                 "--model", "greedy"]) == 0
    assert sorted(p.name for p in (tmp_path / "greedy").iterdir()) == \
        sorted(f"{c}.nii.gz" for c in train)
    found = set()
    for case in train:
        same_file(tmp_path / "greedy" / f"{case}.nii.gz",
                  tmp_path / "eval-greedy" / "predictions" / f"{case}.nii.gz")
        found |= set(np.unique(np.asarray(nib.load(tmp_path / "greedy" /
                                                   f"{case}.nii.gz").dataobj)).tolist())
    assert found <= LABEL_IDS and len(found) > 1  # labels, not just background

    # From Python: the array and its affine, as the CLI's file.
    from search.predict import load_model

    model = load_model(run_dir, "greedy")
    case, image = next(iter(train.items()))
    src = nib.load(image)
    labels = model.predict(src.get_fdata(), affine=src.affine)
    assert labels.shape == src.shape
    assert np.array_equal(labels, np.asarray(nib.load(tmp_path / "greedy" /
                                                      f"{case}.nii.gz").dataobj))


def test_soup_checkpoints_hold_values_not_the_search_space(smoke_run):
    _, run_dir, _ = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    best = torch.load(run_dir / summary["best"]["checkpoint"] / "checkpoint.pt",
                      weights_only=True)
    for kind in ("uniform", "greedy"):
        soup = torch.load(run_dir / "soup" / kind / "checkpoint.pt", weights_only=True)
        assert soup["config"] == best["config"]  # every soup starts from the best trial
        assert not any(isinstance(v, dict) for v in soup["config"].values())
        assert isinstance(soup["config"]["optimizer.lr"], float)
        assert soup["ingredient_configs"] == {t: trials[t]["config"]
                                              for t in soup["ingredients"]}


def test_predict_errors_through_the_cli(smoke_run, tmp_path, capsys):
    _, run_dir, _ = smoke_run
    image = next(iter(images(run_dir, "test").values()))
    proc = cli("predict", str(run_dir), "-i", image, "-o", str(tmp_path / "out"), "--model",
               "nothing")
    assert proc.returncode == 2
    assert proc.stderr == ("segtune: error: --model nothing: not one of best, greedy, uniform "
                           "and no checkpoint file there\n")
    # A run without soups (as soup.enabled: false leaves one).
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("soup", ".soup-*", "eval"))
    summary = json.loads((bare / "summary.json").read_text())
    (bare / "summary.json").write_text(json.dumps({**summary, "soups": None, "soup_set": None}))
    assert main(["predict", str(bare), "-i", image, "-o", str(tmp_path / "out"), "--model",
                 "uniform"]) == 2
    assert f"{bare / 'soup' / 'uniform' / 'checkpoint.pt'}: no uniform soup in this run" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()
