"""`search.predict` without Ray: a run folder made by hand (spec, run.json, summary.json, a
checkpoint of a tiny network), images small enough for a second of CPU each."""

from __future__ import annotations

import json
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch

from search.cli import main
from search.errors import PredictError
from search.predict import find_images, image_name, load_model, predict_files
from search.spec import load_spec
from train_fn.checkpoint import save_checkpoint
from train_fn.models import architecture, build_model

SPEC = """
data:
  source: phantom
  cases: 6
  orientation: RAS
  spacing: [5.0, 4.0, 9.0]
model:
  name: unet
  channels: [4, 8]
  strides: [2]
  num_res_units: 0
optimizer:
  name: novograd
  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
train:
  patch_size: [16, 16, 8]
  sw_batch_size: 2
  device: cpu
"""
# An affine that flips and permutes axes, so orientation and resampling both have work to do.
AFFINE = np.array([[0.0, -3.0, 0.0, 40.0], [-3.5, 0.0, 0.0, 20.0], [0.0, 0.0, 7.5, -10.0],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, phantom_root):
    """A finished run as `python -m search run` leaves one, as far as predicting needs: the
    best trial's checkpoint (initial weights: on noise they predict every label) and no
    soups."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    (run / "spec.yaml").write_text(textwrap.dedent(SPEC).lstrip())
    spec = load_spec(run / "spec.yaml").resolve({"optimizer.lr": 0.02})
    net = build_model(spec.model, 1, 5)
    state = {"model": net.state_dict(), "config": spec.flat(),
             "architecture": architecture(spec.model, 1, 5)}
    save_checkpoint(run / "trial_a" / "checkpoint_000001", state)
    split = {"train": ["Patient_01"], "val": ["Patient_02"], "test": ["Patient_03"]}
    (run / "run.json").write_text(json.dumps({"name": "tiny", "data_root": str(phantom_root),
                                              "split": split}))
    (run / "summary.json").write_text(json.dumps({"best": {
        "trial_id": "a", "config": {"optimizer.lr": 0.02},
        "checkpoint": "trial_a/checkpoint_000001"}, "trials": [], "soups": None}))
    return run


def write_image(path, shape=(22, 18, 10), affine=AFFINE, seed=0):
    data = np.random.default_rng(seed).normal(0, 400, shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize("path, name", [
    ("a/Patient_41.nii.gz", "Patient_41"), ("ct.nii", "ct"), ("x.y.nii.gz", "x.y"),
    ("scan.nii.gz.nii", "scan.nii.gz"),
])
def test_image_name(path, name):
    assert image_name(path) == name


def test_predict_file_and_array_agree_in_the_inputs_grid(run_dir, tmp_path):
    model = load_model(run_dir, "best")
    assert model.name == "best" and model.channels == 1
    assert model.labels == {1: "esophagus", 2: "heart", 3: "trachea", 4: "aorta"}
    assert model.spec.optimizer.lr == 0.02  # the checkpoint's value, not the searched range
    src = write_image(tmp_path / "ct.nii.gz")
    labels = model.predict(src)
    assert labels.shape == (22, 18, 10) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    # The inversion is not a no-op: a transposed image is segmented as the same anatomy.
    img = nib.load(src)
    assert np.array_equal(model.predict(img.get_fdata(), affine=img.affine), labels)
    assert np.array_equal(model.predict(np.asarray(img.dataobj)[..., None],
                                        affine=img.affine), labels)
    out = tmp_path / "out" / "ct.nii.gz"
    out.parent.mkdir()
    assert np.array_equal(model.predict_file(src, out), labels)
    written = nib.load(out)
    assert np.array_equal(np.asarray(written.dataobj), labels)
    np.testing.assert_array_equal(written.affine, AFFINE)
    assert [p.name for p in out.parent.iterdir()] == ["ct.nii.gz"]  # no temporary left
    # An axis-aligned image given by its spacing is the same as by its diagonal affine.
    aligned = write_image(tmp_path / "aligned.nii.gz", affine=np.diag([3.0, 3.0, 7.5, 1.0]))
    data = np.asarray(nib.load(aligned).dataobj)
    assert np.array_equal(model.predict(data, spacing=(3.0, 3.0, 7.5)), model.predict(aligned))


@pytest.mark.parametrize("kwargs, message", [
    ({"image": np.zeros((8, 8))}, "image array of shape (8, 8): expected (X, Y, Z), or "
     "(X, Y, Z, C) with channels last"),
    ({"image": np.zeros((8, 8, 8))}, "an image array needs its affine (4 x 4) or its spacing"),
    ({"image": np.zeros((8, 8, 8)), "affine": np.eye(3)}, "affine of shape (3, 3): expected "
     "4 x 4"),
    ({"image": np.zeros((8, 8, 8, 2)), "spacing": (1, 1, 1)}, "image array of shape "
     "(8, 8, 8, 2): 2 channel(s), the run's model takes 1"),
])
def test_array_errors(run_dir, kwargs, message):
    model = load_model(run_dir, "best")
    with pytest.raises(PredictError) as err:
        model.predict(**kwargs)
    assert str(err.value).startswith(message)


def test_folder_and_files_give_one_output_each(run_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(inputs / "b.nii.gz", seed=1)
    write_image(inputs / "a.nii", shape=(20, 16, 12), seed=2)
    (inputs / "notes.txt").write_text("not an image")
    write_image(inputs / ".b.nii.gz.tmp-1.nii.gz")  # a half-written file: hidden, skipped
    assert [p.name for p in find_images([inputs])] == ["a.nii", "b.nii.gz"]
    assert find_images([inputs / "b.nii.gz", inputs, inputs / "b.nii.gz"]) == \
        [inputs / "b.nii.gz", inputs / "a.nii"]  # each file once, in the order first named
    out = tmp_path / "out"
    written = predict_files(run_dir, [inputs], out)
    assert written == [out / "a.nii.gz", out / "b.nii.gz"]
    for src, dst in zip(sorted(find_images([inputs])), written, strict=True):
        assert nib.load(dst).shape == nib.load(src).shape
        np.testing.assert_array_equal(nib.load(dst).affine, nib.load(src).affine)
    single = predict_files(run_dir, [inputs / "b.nii.gz"], tmp_path / "one")
    assert single == [tmp_path / "one" / "b.nii.gz"]
    assert np.array_equal(np.asarray(nib.load(single[0]).dataobj),
                          np.asarray(nib.load(out / "b.nii.gz").dataobj))


def _errors(tmp_path, run_dir):
    """(arguments after `predict`, the message) of each user error."""
    good = write_image(tmp_path / "good.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), flat)
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), two)
    (tmp_path / "fake.nii.gz").write_bytes(b"not a nifti file at all" * 20)
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dup").mkdir()
    write_image(tmp_path / "dup" / "good.nii")
    return [
        ([str(tmp_path / "nope"), "-i", str(good)],
         f"{tmp_path / 'nope'}: no such run folder (give a segtune run folder"),
        ([str(tmp_path), "-i", str(good)],
         f"{tmp_path}: not a segtune run folder (no run.json; a run folder holds run.json, "
         "spec.yaml and summary.json)"),
        ([str(run_dir), "-i", str(tmp_path / "empty")],
         f"--input {tmp_path / 'empty'}: no NIfTI images (*.nii, *.nii.gz) in this folder"),
        ([str(run_dir), "-i", str(tmp_path / "missing.nii.gz")],
         f"--input {tmp_path / 'missing.nii.gz'}: no such file or folder"),
        ([str(run_dir), "-i", str(tmp_path / "scan.png")],
         f"{tmp_path / 'scan.png'}: not a NIfTI image (expected a .nii or .nii.gz file)"),
        ([str(run_dir), "-i", str(tmp_path / "fake.nii.gz")],
         f"{tmp_path / 'fake.nii.gz'}: not a readable NIfTI image ("),
        ([str(run_dir), "-i", str(good), str(flat)],
         f"{flat}: image has 2 dimensions (8, 8); expected 3 (or 4 with channels last)"),
        ([str(run_dir), "-i", str(two)], f"{two}: 2 channel(s), the run's model takes 1"),
        ([str(run_dir), "-i", str(good), "--model", "nothing"],
         "--model nothing: not one of best, greedy, uniform and no checkpoint file there"),
        ([str(run_dir), "-i", str(good), "--model", "greedy"],
         f"{run_dir / 'soup' / 'greedy' / 'checkpoint.pt'}: no greedy soup in this run "
         f"(soup.enabled was off or the search did not finish; make one with: python -m "
         f"search soup {run_dir})"),
        ([str(run_dir), "-i", str(good), str(tmp_path / "dup")],
         f"--input: {good} and {tmp_path / 'dup' / 'good.nii'} would both be written to "),
        ([str(run_dir), "-i", str(good), "-o", str(tmp_path)],
         f"--output {tmp_path}: {good} would overwrite its input; choose another --output "
         "folder"),
    ]


def test_user_errors_are_one_line_exit_2_and_write_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for args, message in _errors(tmp_path, run_dir):
        if "-o" not in args:
            args = [*args, "-o", str(out)]
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["predict", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("segtune: error: ") and message in err, (err, message)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not list(run_dir.parent.glob(".*.lock"))  # the run lock was let go


def test_cli_prints_each_file_written(run_dir, tmp_path, capsys):
    src = write_image(tmp_path / "Patient_41.nii.gz")
    assert main(["predict", str(run_dir), "--input", str(src), "--output",
                 str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'out' / 'Patient_41.nii.gz'}\n"
    assert f"1 prediction(s) in {tmp_path / 'out'}" in captured.err


def test_soup_checkpoint_settings_are_read_as_values(run_dir, tmp_path):
    """A soup made before soups recorded values (its config is the search space) is read with
    the best trial's values; one that records values is read with its own."""
    spec = load_spec(run_dir / "spec.yaml")
    best = torch.load(run_dir / "trial_a" / "checkpoint_000001" / "checkpoint.pt",
                      weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({"model": best["model"], "config": spec.flat(), "ingredients": ["a"]}, old)
    assert isinstance(spec.flat()["optimizer.lr"], dict)
    assert load_model(run_dir, str(old)).spec.optimizer.lr == 0.02
    new = tmp_path / "new.pt"
    torch.save({"model": best["model"], "config": {**best["config"], "optimizer.lr": 0.05}},
               new)
    assert load_model(run_dir, str(new)).spec.optimizer.lr == 0.05


def test_predict_holds_the_run_lock(run_dir, tmp_path, capsys):
    from search.runlock import run_lock

    src = write_image(tmp_path / "ct.nii.gz")
    with run_lock(run_dir):  # as a running `evaluate` or `soup` holds it
        assert main(["predict", str(run_dir), "-i", str(src), "-o", str(tmp_path / "o")]) == 2
    assert f"{run_dir}: in use by another segtune process" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_label_files_of_the_run_layout_are_skipped_with_a_line(run_dir, tmp_path, caplog):
    scans = tmp_path / "Patient_41"
    scans.mkdir()
    write_image(scans / "Patient_41.nii.gz")
    write_image(scans / "GT.nii.gz", seed=1)  # SegTHOR keeps the labels beside the image
    with caplog.at_level("WARNING", logger="search.predict"):
        written = predict_files(run_dir, [scans], tmp_path / "out")
    assert written == [tmp_path / "out" / "Patient_41.nii.gz"]
    assert f"skipped {scans / 'GT.nii.gz'}: a label file of the phantom layout" in caplog.text


def test_device_cuda_without_cuda_and_a_bad_overlap_are_one_line_exit_2(run_dir, tmp_path,
                                                                        capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    src = write_image(tmp_path / "a.nii.gz")
    for extra, message in ((["--device", "cuda"], "--device cuda: no CUDA device on this "
                            "machine (torch "), (["--overlap", "1.5"], "--overlap 1.5: the "
                            "sliding windows' overlap is a fraction in [0, 1)")):
        code = main(["predict", str(run_dir), "-i", str(src), "-o", str(tmp_path / "o"),
                     *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("segtune: error: ") and message in err, err
        assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_mirroring_averages_the_eight_flips_and_probabilities_are_saved(run_dir, tmp_path):
    from train_fn.metrics import probabilities

    model = load_model(run_dir, "best")
    image = torch.randn(1, 24, 20, 12)
    args = (model.net, image, (16, 16, 8), 2, 0.25, torch.device("cpu"))
    with torch.no_grad():
        plain = probabilities(*args)
        mirrored = probabilities(*args, mirror=True)
        by_hand = sum(probabilities(model.net, image.flip([a - 1 for a in axes]), *args[2:]
                                    ).flip([a - 1 for a in axes]) if axes else plain
                      for axes in ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))) / 8
    assert torch.allclose(mirrored, by_hand, atol=1e-6)
    assert not torch.allclose(mirrored, plain, atol=1e-3)  # the flips change the answer
    src = write_image(tmp_path / "a.nii.gz")
    written = predict_files(run_dir, [src], tmp_path / "out", tta=True, probabilities=True)
    labels = nib.load(written[0]).get_fdata()
    prob = np.load(tmp_path / "out" / "a.npz")["probabilities"]
    assert prob.shape == (5, *labels.shape) and prob.dtype == np.float16
    assert np.allclose(prob.sum(0), 1, atol=1e-2)
    # Labels are the argmax on the preprocessed grid resampled by nearest neighbour, the
    # probabilities resampled linearly: on noise most voxels still agree (chance is 1 in 5).
    assert (prob.argmax(0) == labels).mean() > 0.6


def test_continue_skips_the_inputs_whose_output_exists(run_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(("a", "b")):
        write_image(folder / f"{name}.nii.gz", seed=seed)
    out = tmp_path / "out"
    assert len(predict_files(run_dir, [folder], out)) == 2
    first = (out / "a.nii.gz").stat().st_mtime_ns
    (out / "b.nii.gz").unlink()  # as if killed before b
    assert predict_files(run_dir, [folder], out, skip_existing=True) == [out / "b.nii.gz"]
    assert (out / "a.nii.gz").stat().st_mtime_ns == first
    assert predict_files(run_dir, [folder], out, skip_existing=True) == []
