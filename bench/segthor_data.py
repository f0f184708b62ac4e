"""Write SegTHOR-shaped cases (512 x 512 x 150-280 int16 HU, ~0.9-1.06 x 0.9-1.06 x 2.5 mm, the
SegTHOR layout) into a folder you name, for the real-size benchmark (`bench/real_size.py`).
Never used by the test suite.

Each case is segtune's thorax phantom drawn at a quarter of the in-plane and half of the
through-plane resolution over a SegTHOR-sized field of view (~460-540 mm across, 375-700 mm
long), resampled to full size (linear for the image, nearest for the labels) and given fresh
scanner noise at full resolution, so the files compress like CT does rather than like a smooth
upsampled volume.

    python bench/segthor_data.py /data/segthor-like --cases 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_full_case(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image int16 HU, label uint8, spacing mm) of one SegTHOR-shaped case."""
    from scipy.ndimage import gaussian_filter, zoom

    from train_fn.phantom import make_case

    rng = np.random.default_rng(10_000 + seed)
    inplane = float(rng.uniform(0.9, 1.06))
    slices = int(rng.integers(75, 141)) * 2  # 150-280 slices of 2.5 mm
    image, label = make_case(seed, shape=(128, 128, slices // 2),
                             spacing=(4 * inplane, 4 * inplane, 5.0))
    image = zoom(image.astype(np.float32), (4, 4, 2), order=1, grid_mode=True,
                 mode="grid-constant", cval=-1000.0)
    label = zoom(label, (4, 4, 2), order=0, grid_mode=True, mode="nearest")
    noise = rng.normal(0, 12, image.shape).astype(np.float32)
    image += gaussian_filter(noise, (0.7, 0.7, 0.0)) * 2.0
    return (np.clip(image, -1024, 3071).astype(np.int16), label.astype(np.uint8),
            (inplane, inplane, 2.5))


def write_cases(root: Path, n: int) -> None:
    import nibabel as nib

    for i in range(n):
        case = root / "train" / f"Patient_{i + 1:02d}"
        if (case / "GT.nii.gz").is_file():
            continue
        t = time.perf_counter()
        image, label, spacing = make_full_case(i)
        tmp = case.with_name(case.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image, affine), tmp / f"{case.name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), tmp / "GT.nii.gz")
        tmp.rename(case)
        size = sum(f.stat().st_size for f in case.iterdir()) / 2**20
        print(f"{case.name}: {image.shape} at {spacing[0]:.2f} x {spacing[1]:.2f} x "
              f"{spacing[2]} mm, {size:.0f} MiB, {time.perf_counter() - t:.1f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write (cases already there are kept)")
    parser.add_argument("--cases", type=int, default=40)
    args = parser.parse_args()
    write_cases(args.root, args.cases)


if __name__ == "__main__":
    main()
