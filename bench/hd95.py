"""HD95 on one SegTHOR-sized case: MONAI's `compute_hausdorff_distance(percentile=95)` (the
definition segtune keeps) against segtune's `train_fn.metrics.hd95`, per region, on three
predictions made from the reference: shifted 2 voxels (good), shifted 5 voxels plus scattered
noise (poor, an early epoch), and scattered blobs only. Prints both values and both times.

    python bench/hd95.py /work/data/segthor40/train/Patient_01/GT.nii.gz
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def monai_hd95(pred, ref, spacing) -> float:
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_hausdorff_distance(
            pred[None, None].float(), ref[None, None].float(), include_background=True,
            percentile=95, spacing=list(spacing)).reshape(-1)[0])


def main() -> None:
    import nibabel as nib
    import torch
    from scipy.ndimage import gaussian_filter, zoom

    from train_fn.metrics import hd95

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label", type=Path, help="a SegTHOR GT.nii.gz")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 2.5])
    args = parser.parse_args()
    img = nib.load(args.label)
    zooms = img.header.get_zooms()[:3]
    label = zoom(np.asarray(img.dataobj), [z / s for z, s in zip(zooms, args.spacing,
                                                                   strict=True)], order=0)
    print(f"{args.label} resampled to {label.shape} at {args.spacing} mm")
    noise = gaussian_filter(np.random.default_rng(0).normal(size=label.shape)
                            .astype(np.float32), 2)
    names = {1: "esophagus", 2: "heart", 3: "trachea", 4: "aorta"}
    for c, name in names.items():
        ref = torch.from_numpy(label == c)
        cases = {"good": np.roll(label == c, 2, axis=0),
                 "poor": np.roll(label == c, 5, axis=1) | (noise > 0.05 + 0.005 * c),
                 "blobs": noise > 0.02}
        for kind, pred in cases.items():
            pred = torch.from_numpy(pred)
            t = time.perf_counter()
            a = monai_hd95(pred, ref, args.spacing)
            t_monai = time.perf_counter() - t
            t = time.perf_counter()
            b = hd95(pred, ref, tuple(args.spacing))
            t_ours = time.perf_counter() - t
            print(f"{name:10s} {kind:6s} MONAI {a:9.4f} mm {t_monai:6.2f} s   segtune "
                  f"{b:9.4f} mm {t_ours:6.2f} s   ({t_monai / t_ours:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
