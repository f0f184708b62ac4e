"""`predict` checks every input and its model before it writes anything (issue 30, item 6): a
truncated `.nii.gz`, an image with NaN voxels, a checkpoint with NaN weights, a file that is
no checkpoint. Each is one line naming the file, exit code 2, no output folder."""

from __future__ import annotations

import json
import pickle
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch

from search.cli import main
from search.spec import load_spec
from train_fn.checkpoint import save_checkpoint
from train_fn.models import architecture, build_model

SPEC = """
data:
  source: phantom
  cases: 6
model:
  name: unet
  channels: [4, 8]
  strides: [2]
  num_res_units: 0
train:
  patch_size: [16, 16, 8]
  sw_batch_size: 2
  device: cpu
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, phantom_root):
    """A finished run, as far as predicting needs: the best trial's checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    (run / "spec.yaml").write_text(textwrap.dedent(SPEC).lstrip())
    spec = load_spec(run / "spec.yaml")
    state = {"model": build_model(spec.model, 1, 5).state_dict(), "config": spec.flat(),
             "architecture": architecture(spec.model, 1, 5)}
    save_checkpoint(run / "trial_a" / "checkpoint_000001", state)
    split = {"train": ["Patient_01"], "val": ["Patient_02"], "test": ["Patient_03"]}
    (run / "run.json").write_text(json.dumps({"name": "tiny", "data_root": str(phantom_root),
                                              "split": split}))
    (run / "summary.json").write_text(json.dumps({"best": {
        "trial_id": "a", "config": {}, "checkpoint": "trial_a/checkpoint_000001"},
        "trials": [], "soups": None}))
    return run


def _image(path, dtype=np.int16, nan=False):
    data = np.random.default_rng(0).normal(0, 400, (22, 18, 10)).astype(dtype)
    if nan:
        data[3:6, 4:8, 2:4] = np.nan  # 24 voxels
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 7.5, 1.0])), path)
    return path


def _truncated(path):
    _image(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])  # the header still reads
    assert nib.load(path).shape == (22, 18, 10)
    return path


def _call(run_dir, tmp_path, capsys, *inputs, model=None):
    out = tmp_path / "out"
    args = ["predict", str(run_dir), "-i", *map(str, inputs), "-o", str(out)]
    code = main(args + (["--model", str(model)] if model else []))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("segtune:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "--debug" not in err, err
    assert not out.exists()  # checked before anything was written
    return lines[0]


def test_a_truncated_gz_is_named_before_any_output(run_dir, tmp_path, capsys):
    good = _image(tmp_path / "a_good.nii.gz")
    bad = _truncated(tmp_path / "b_cut.nii.gz")
    line = _call(run_dir, tmp_path, capsys, good, bad)
    assert line.startswith(f"segtune: error: {bad}: cannot be read to its end (truncated or "
                           "damaged: EOFError"), line
    assert line.endswith("; nothing was written")


def test_a_nan_image_is_refused_and_every_bad_input_named(run_dir, tmp_path, capsys):
    good = _image(tmp_path / "a_good.nii.gz")
    nan = _image(tmp_path / "b_nan.nii.gz", np.float32, nan=True)
    cut = _truncated(tmp_path / "c_cut.nii.gz")
    line = _call(run_dir, tmp_path, capsys, good, nan, cut)
    assert line == (f"segtune: error: {nan}: 24 voxel(s) (0.61%) are NaN or infinite; an "
                    f"image to segment holds finite values only; 1 more bad input(s): {cut}; "
                    "nothing was written")


def test_nan_weights_are_refused(run_dir, tmp_path, capsys):
    state = torch.load(run_dir / "trial_a" / "checkpoint_000001" / "checkpoint.pt",
                       weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key].clone()
    state["model"][key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    line = _call(run_dir, tmp_path, capsys, _image(tmp_path / "a.nii.gz"),
                 model=tmp_path / "nan.pt")
    assert line == (f"segtune: error: --model {tmp_path / 'nan.pt'}: {tmp_path / 'nan.pt'} "
                    f"has non-finite (NaN or infinite) weights in {key}; it cannot predict "
                    "(pick another checkpoint or soup)")


@pytest.mark.parametrize("content, said", [
    ("list", "is not a segtune checkpoint (a dict with 'model' weights); it holds list"),
    ("pickle", "is not a segtune checkpoint (torch.load(weights_only=True) refused it: "
               "UnpicklingError; nothing in it was run)"),
])
def test_a_file_that_is_no_checkpoint_is_refused(run_dir, tmp_path, capsys, content, said):
    path = tmp_path / "model.pt"
    if content == "list":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(pickle.dumps({"model": {1, 2}}))  # a set: no weights-only type
    line = _call(run_dir, tmp_path, capsys, _image(tmp_path / "a.nii.gz"), model=path)
    assert line == f"segtune: error: --model {path}: {path} {said}"


def test_good_inputs_still_predict(run_dir, tmp_path, capsys):
    src = _image(tmp_path / "ct.nii.gz", np.float32)
    assert main(["predict", str(run_dir), "-i", str(src), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ct.nii.gz").is_file()
