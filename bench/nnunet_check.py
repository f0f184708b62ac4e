"""`evaluate-folder` against nnU-Net's own folder scorer, on the same folders.

    pip install --no-deps --target /work/data/nnunet_pkgs nnunetv2 batchgenerators acvl-utils \
        dynamic-network-architectures SimpleITK tifffile scikit-image lazy_loader imageio \
        networkx blosc2 ndindex httpx        # the `bench` extra's nnunetv2, torch untouched
    PYTHONPATH=.:/work/data/nnunet_pkgs python bench/nnunet_check.py [--out DIR]

Writes two folder pairs: the hand-made 4 x 4 x 4 cases of tests/unit/
test_evaluate_folder_nnunet.py, and 6 seeded 48 x 40 x 32 volumes of random blobs (labels
1-4, predictions shifted and eroded, some labels dropped from some cases so that NaN and
empty-reference cases occur). Scores each pair with `python -m search evaluate-folder` and
with nnU-Net's `compute_metrics_on_folder` (SimpleITK reader, one process) for several
label / region / ignore-label settings, and prints per setting the number of values compared,
how many differ (NaN counts as equal to NaN only), and the largest absolute difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

SETTINGS = {  # name: (our evaluate-folder options, nnU-Net's regions_or_labels, ignore label)
    "labels 1-4": (["-l", "1", "2", "3", "4"], [1, 2, 3, 4], None),
    "labels 1-3, ignore 4": (["-l", "1", "2", "3", "-il", "4"], [1, 2, 3], 4),
    "regions (1,2,3) (2,3) (3,)": (["-r", "1,2,3", "2,3", "3"], [(1, 2, 3), (2, 3), (3,)],
                                   None),
    "regions + labels, ignore 4": (["-l", "1", "-r", "1,2", "2,3", "-il", "4"],
                                   [1, (1, 2), (2, 3)], 4),
}


def hand_made(folder: Path) -> tuple[Path, Path]:
    from test_evaluate_folder_nnunet import _cases

    return _write(folder, [(name, r, p) for name, r, p in _cases()])


def blobs(folder: Path, n: int = 6) -> tuple[Path, Path]:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        ref = np.zeros((48, 40, 32), np.uint8)
        for label in (1, 2, 3, 4):
            if rng.random() < 0.2:  # a label absent from this case's reference
                continue
            centre = rng.integers(8, 32, 3)
            grid = np.indices(ref.shape)
            ref[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
                < rng.integers(20, 80)] = label
        pred = np.roll(ref, rng.integers(-2, 3, 3), axis=(0, 1, 2))
        for label in (1, 2, 3):
            pred[ndimage.binary_erosion(pred == label) ^ (pred == label)] = 0
        if rng.random() < 0.3:  # a false positive blob of a label the reference lacks
            pred[:4, :4, :4] = 3
        cases.append((f"case_{i:03d}.nii.gz", ref, pred))
    return _write(folder, cases)


def _write(folder: Path, cases) -> tuple[Path, Path]:
    ref, pred = folder / "ref", folder / "pred"
    ref.mkdir(parents=True, exist_ok=True)
    pred.mkdir(parents=True, exist_ok=True)
    for name, r, p in cases:
        nib.save(nib.Nifti1Image(r.astype(np.uint8), np.eye(4)), ref / name)
        nib.save(nib.Nifti1Image(p.astype(np.uint8), np.eye(4)), pred / name)
    return ref, pred


def compare(ref: Path, pred: Path, work: Path, options, regions, ignore) -> tuple[int, int,
                                                                                   float]:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from search.cli import main

    ours_file, theirs_file = work / "ours.json", work / "theirs.json"
    with contextlib.redirect_stdout(io.StringIO()):  # its table: not this script's
        assert main(["evaluate-folder", str(ref), str(pred), "-o", str(ours_file),
                     *options]) == 0
    compute_metrics_on_folder(str(ref), str(pred), str(theirs_file), SimpleITKIO(), ".nii.gz",
                              regions, ignore, num_processes=1)
    ours, theirs = json.loads(ours_file.read_text()), json.loads(theirs_file.read_text())
    pairs = [(ours["mean"], theirs["mean"]), (ours["foreground_mean"],
                                              theirs["foreground_mean"])]
    pairs += [(a["metrics"], b["metrics"]) for a, b in
              zip(ours["metric_per_case"], theirs["metric_per_case"], strict=True)]
    count = differ = 0
    worst = 0.0
    for a, b in pairs:
        for key, x, y in _leaves(a, b):
            count += 1
            if math.isnan(x) != math.isnan(y) or (not math.isnan(x) and abs(x - y) > 1e-12):
                differ += 1
                print(f"  differs: {key}: ours {x}, nnU-Net {y}")
            if not math.isnan(x) and not math.isnan(y):
                worst = max(worst, abs(x - y))
    return count, differ, worst


def _leaves(a, b, prefix=""):
    if a.keys() != b.keys():
        raise AssertionError(f"{prefix}: keys {sorted(a)} against nnU-Net's {sorted(b)}")
    for key in a:
        if isinstance(a[key], dict):
            yield from _leaves(a[key], b[key], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", float(a[key]), float(b[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/work/data/nnunet-check")
    args = parser.parse_args()
    out = Path(args.out)
    from importlib.metadata import version

    import nnunetv2

    print(f"nnunetv2 {version('nnunetv2')} from {nnunetv2.__file__}")
    print("| folders | setting | values compared | differ | max abs difference |")
    print("| --- | --- | --- | --- | --- |")
    for name, make in (("hand-made (3 cases)", hand_made), ("blobs (6 cases)", blobs)):
        ref, pred = make(out / name.split()[0])
        for setting, (options, regions, ignore) in SETTINGS.items():
            count, differ, worst = compare(ref, pred, out, options, regions, ignore)
            print(f"| {name} | {setting} | {count} | {differ} | {worst:.1e} |")


if __name__ == "__main__":
    main()
