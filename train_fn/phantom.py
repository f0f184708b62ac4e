"""A procedural thorax CT phantom in the SegTHOR layout.

Each case is drawn in millimetres and rasterised: body with a fat rim, two lungs, spine, a
mediastinum of fat and soft tissue, and the four SegTHOR organs (1 esophagus, 2 heart,
3 trachea, 4 aorta). What makes each class easy or hard mirrors real CT:

- heart: large, bright with contrast, easy;
- aorta: a tube with an ascending part, an arch and a descending part, bright with contrast;
- trachea: air (-1000 HU) that splits into unlabelled bronchi at the carina, so it needs the air
  end of the window and some shape context;
- esophagus: a thin soft-tissue tube only ~10-30 HU off its surroundings, sometimes with an air
  bubble: the hardest class.

Shapes, sizes, positions, contrast and noise vary by case. Written once and reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ESOPHAGUS, HEART, TRACHEA, AORTA = 1, 2, 3, 4
SHAPE = (96, 96, 48)  # voxels (x: right-left, y: anterior-posterior, z: inferior-superior)
SPACING = (4.0, 4.0, 5.0)  # mm
MANIFEST = "phantom.json"
_FORMAT = 1  # bump when drawing changes, so stale caches are not reused


def _tube(grid: np.ndarray, points: np.ndarray, spacing: tuple[float, float, float],
          radius: float | np.ndarray) -> np.ndarray:
    """Voxels within `radius` mm of a polyline (points in mm, shape (N, 3))."""
    from scipy.ndimage import distance_transform_edt

    dense = _densify(points, step=min(spacing) / 2)
    idx = np.round(dense / np.asarray(spacing)).astype(int)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    seeds = np.ones(grid.shape, dtype=bool)
    seeds[tuple(idx[inside].T)] = False
    if np.isscalar(radius):
        return distance_transform_edt(seeds, sampling=spacing) <= radius
    # Varying radius along the curve: each voxel takes the radius of its nearest seed.
    dist, nearest = distance_transform_edt(seeds, sampling=spacing, return_indices=True)
    radius_map = np.zeros(grid.shape, dtype=np.float32)
    radius_map[tuple(idx[inside].T)] = np.interp(
        np.arange(len(dense))[inside], np.linspace(0, len(dense) - 1, len(radius)), radius
    )
    return dist <= radius_map[tuple(nearest)]


def _densify(points: np.ndarray, step: float) -> np.ndarray:
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:], strict=False):
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / step)) + 1)
        out.append(np.linspace(a, b, n)[1:])
    return np.concatenate(out)


def _wiggle(rng: np.random.Generator, z: np.ndarray, amp: float) -> np.ndarray:
    """A smooth random offset along z (sum of two low-frequency sines)."""
    f = rng.uniform(0.5, 1.5, 2) * 2 * np.pi / (z.max() - z.min() + 1e-6)
    p = rng.uniform(0, 2 * np.pi, 2)
    return amp * (0.6 * np.sin(f[0] * z + p[0]) + 0.4 * np.sin(2 * f[1] * z + p[1]))


def make_case(seed: int, shape: tuple[int, int, int] = SHAPE,
              spacing: tuple[float, float, float] = SPACING) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image in HU as int16, label as uint8), both of `shape`."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing
    extent = np.array(shape) * np.array(spacing)
    cx, cy = extent[0] / 2 + rng.uniform(-8, 8), extent[1] / 2 + rng.uniform(-8, 8)
    x = np.arange(shape[0])[:, None, None] * sx
    y = np.arange(shape[1])[None, :, None] * sy
    zs = np.arange(shape[2]) * sz
    z = zs[None, None, :]
    grid = np.empty(shape, dtype=bool)
    u = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731
    ztop = extent[2]

    # Body, fat rim, lungs, spine.
    a, b = u(0.36, 0.44) * extent[0], u(0.28, 0.34) * extent[1]
    r_body = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    image = np.full(shape, -1000.0)
    body = np.broadcast_to(r_body <= 1, shape)
    image[body] = -100.0  # subcutaneous fat
    inner = np.broadcast_to(r_body <= u(0.78, 0.86), shape)
    image[inner] = 35.0  # muscle and mediastinal soft tissue
    lung_dx, lung_a, lung_b = u(0.46, 0.52) * a, u(0.34, 0.40) * a, u(0.62, 0.72) * b
    for side in (-1, 1):
        lung = (((x - cx - side * lung_dx) / lung_a) ** 2
                + ((y - cy + 0.05 * b) / lung_b) ** 2) <= 1
        image[np.broadcast_to(lung, shape)] = -850.0
    spine_y = cy + u(0.62, 0.70) * b
    spine = ((x - cx) ** 2 + (y - spine_y) ** 2) <= u(14, 18) ** 2
    image[np.broadcast_to(spine, shape)] = 650.0
    # Mediastinal fat: blobs of -90 HU around the organs, so the esophagus boundary is partial.
    fat = gaussian_filter(rng.normal(size=shape), sigma=(2.0, 2.0, 1.0)) > 0.25
    mediastinum = np.broadcast_to(((x - cx) / (0.32 * a)) ** 2 + ((y - cy) / (0.8 * b)) ** 2 <= 1,
                                  shape)
    image[fat & mediastinum & (image > 0) & (image < 100)] = -90.0

    label = np.zeros(shape, dtype=np.uint8)
    contrast = u(90, 220)  # enhancement of the blood pool: varies with bolus timing

    # Heart: an ellipsoid low in the chest, anterior and to the left.
    hc = np.array([cx + u(0.05, 0.2) * a, cy - u(0.15, 0.3) * b, u(0.18, 0.32) * ztop])
    hr = np.array([u(50, 66), u(40, 52), u(45, 60)])
    rot = u(-0.5, 0.5)
    xr = (x - hc[0]) * np.cos(rot) + (y - hc[1]) * np.sin(rot)
    yr = -(x - hc[0]) * np.sin(rot) + (y - hc[1]) * np.cos(rot)
    heart = (xr / hr[0]) ** 2 + (yr / hr[1]) ** 2 + ((z - hc[2]) / hr[2]) ** 2 <= 1
    image[heart] = 40.0 + contrast * u(0.7, 0.9)
    label[heart] = HEART

    # Aorta: ascending from the heart, an arch, descending left of the spine.
    arch_z = u(0.68, 0.80) * ztop
    asc = np.array([hc[0] - u(10, 25), hc[1] + u(0, 15)])
    desc = np.array([cx + u(18, 30), spine_y - u(22, 30)])
    t = np.linspace(0, np.pi, 16)
    arch = np.stack([asc[0] + (desc[0] - asc[0]) * (1 - np.cos(t)) / 2,
                     asc[1] + (desc[1] - asc[1]) * (1 - np.cos(t)) / 2,
                     arch_z + u(15, 25) * np.sin(t)], axis=1)
    path = np.concatenate([[[*asc, hc[2]]], arch, [[*desc, -10.0]]])
    aorta = _tube(grid, path, spacing, np.array([u(13, 16), u(11, 14), u(10, 13)]))
    image[aorta] = 40.0 + contrast
    label[aorta] = AORTA

    # Esophagus: thin, low contrast, between trachea and spine, the whole height.
    ez = np.linspace(-10, ztop + 10, 12)
    eso_path = np.stack([cx + u(2, 10) + _wiggle(rng, ez, 4),
                         spine_y - u(24, 30) + _wiggle(rng, ez, 3), ez], axis=1)
    eso = _tube(grid, eso_path, spacing, u(5.5, 8.0)) & ~aorta
    image[eso] = 35.0 + rng.choice([-1, 1]) * u(12, 25)
    if rng.random() < 0.5:  # swallowed air in a few slices
        bubble = eso & (np.abs(z - u(0.3, 0.7) * ztop) < 8)
        bubble &= _tube(grid, eso_path, spacing, 2.5)
        image[bubble] = -700.0
    label[eso] = ESOPHAGUS

    # Trachea: air in a soft-tissue wall, from the top down to the carina; bronchi below it are
    # air too but not trachea.
    carina_z = u(0.48, 0.58) * ztop
    tz = np.linspace(carina_z, ztop + 10, 8)
    tx, ty = cx + _wiggle(rng, tz, 3), cy + u(0.0, 0.12) * b + _wiggle(rng, tz, 3)
    tr_path = np.stack([tx, ty, tz], axis=1)
    t_r = u(8, 11)
    wall = _tube(grid, tr_path, spacing, t_r + 2.5) & ~aorta
    image[wall & ~eso] = 60.0
    lumen = _tube(grid, tr_path, spacing, t_r) & ~aorta & ~eso
    for side in (-1, 1):  # main bronchi: out and down from the carina
        end = [tx[0] + side * u(35, 50), ty[0] + u(0, 10), carina_z - u(30, 45)]
        bronchus = _tube(grid, np.array([[tx[0], ty[0], carina_z + 4], end]), spacing,
                         t_r * 0.7) & ~aorta & ~heart & ~eso
        image[bronchus] = -1000.0
        label[bronchus & (label == TRACHEA)] = 0
    image[lumen] = -1000.0
    label[lumen & (z >= carina_z)] = TRACHEA

    # Partial-volume blur, then noise.
    image = gaussian_filter(image, sigma=(0.6, 0.6, 0.4))
    image += rng.normal(0, u(12, 30), shape) + gaussian_filter(rng.normal(0, 40, shape), 1.5)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def write_phantom_dataset(root: str | Path, n_cases: int, seed: int = 0,
                          shape: tuple[int, int, int] = SHAPE,
                          spacing: tuple[float, float, float] = SPACING) -> Path:
    """Write `n_cases` phantom cases as `root/train/Patient_XX/{Patient_XX,GT}.nii.gz`.

    Reused when `root` already holds the same phantom; written into a temporary folder and
    moved into place, so an interrupted write leaves nothing half-done behind.
    """
    import nibabel as nib

    def fill(tmp: Path) -> None:
        affine = np.diag([*spacing, 1.0])
        for i in range(n_cases):
            image, label = make_case(seed * 100_003 + i, shape, spacing)
            case = tmp / "train" / f"Patient_{i + 1:02d}"
            case.mkdir(parents=True)
            nib.save(nib.Nifti1Image(image, affine), case / f"{case.name}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), case / "GT.nii.gz")

    want = {"format": _FORMAT, "cases": n_cases, "seed": seed, "shape": list(shape),
            "spacing": list(spacing)}
    return write_once(root, want, fill)


def write_once(root: str | Path, want: dict[str, Any], fill: Callable[[Path], None]) -> Path:
    """Fill `root` once by calling `fill(tmp)` on a temporary sibling folder, then moving it into
    place with a manifest `want` (a JSON-able dict naming what was generated).

    A folder whose manifest equals `want` is reused as it is; a different manifest, or a
    non-empty folder without one, is an error naming the differences. An interrupted write
    leaves nothing half-done behind, and two processes racing for one folder both get it.
    """
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if have == want:
            return root
        diff = ", ".join(f"{k} {have.get(k)} != {v}" for k, v in want.items() if have.get(k) != v)
        raise ValueError(f"{root}: holds a different phantom ({diff}); "
                         f"remove it or choose another data.root")
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: exists and is not a phantom folder (no {MANIFEST}); "
                         f"choose an empty or new data.root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        (tmp / MANIFEST).write_text(json.dumps(want, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():
        root.rmdir()  # empty, checked above
    try:
        os.replace(tmp, root)
    except OSError:  # another process won the race: keep its copy if it is the same phantom
        shutil.rmtree(tmp, ignore_errors=True)
        if json.loads(manifest.read_text()) != want:
            raise
    logger.info("wrote %s to %s", want, root)
    return root


def describe(label: np.ndarray) -> dict[str, Any]:
    """Voxel count per label (for checks and docs)."""
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=False)}
