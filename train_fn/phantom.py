"""A procedural thorax CT phantom in the SegTHOR layout.

Each case is drawn in millimetres: body with a fat rim, two lungs with vessels, spine, a
mediastinum of fat and soft tissue, and the four SegTHOR organs (1 esophagus, 2 heart,
3 trachea, 4 aorta). What makes each class easy or hard mirrors real CT:

- heart: large, bright with contrast, easy;
- aorta: a tube with an ascending part, an arch and a descending part, bright with contrast;
- trachea: air (-1000 HU, darker than lung at about -850) that splits into unlabelled bronchi
  at the carina, so it needs the air end of the window and some shape context;
- esophagus: a thin soft-tissue tube only ~10-30 HU off its surroundings, sometimes with an air
  bubble: the hardest class.

Voxels are anisotropic like SegTHOR's (0.98 x 0.98 x 2.5 mm): 3 x 3 x 7.5 mm here, so a case
stays small enough for a CPU search. Every structure is an implicit surface whose signed
distance gives each voxel the fraction of it inside (partial volume: edges are mixtures, most
of all across the thick slices). Body size (and with it organ sizes and noise), organ
positions, shapes (smooth random bumps), contrast and noise vary by case. Written once and
reused.
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
SHAPE = (128, 96, 32)  # voxels (x: right-left, y: anterior-posterior, z: inferior-superior)
SPACING = (3.0, 3.0, 7.5)  # mm: SegTHOR's in-plane : slice ratio of 1 : 2.5
MANIFEST = "phantom.json"
_FORMAT = 3  # bump when drawing changes, so stale caches are not reused


def coverage(g: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The fraction of each voxel inside the implicit surface `g < 0` (g: any smooth field,
    negative inside): the signed distance g / |grad g| against the voxel's width along the
    surface normal, sum_i |n_i| spacing_i, which is widest across thick slices."""
    grads = np.gradient(g, *spacing)
    norm = np.sqrt(sum(d * d for d in grads)) + 1e-6
    width = sum(np.abs(d) * s for d, s in zip(grads, spacing, strict=True)) / norm
    return np.clip(0.5 - (g / norm) / np.maximum(width, 1e-3), 0.0, 1.0).astype(np.float32)


def _tube(coords: tuple[np.ndarray, ...], spacing: tuple[float, float, float],
          points: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
    """Signed distance (mm) to a tube around a polyline (points in mm, shape (N, 3)) whose
    radius runs linearly through `radius` along its length; exact within a few voxels of the
    surface, capped further out (enough for `coverage`)."""
    shape = tuple(len(c.ravel()) for c in coords)
    radii = np.interp(np.linspace(0, 1, len(points)), np.linspace(0, 1, np.size(radius)),
                      np.atleast_1d(radius))
    cap = 3 * max(spacing)
    sd = np.full(shape, cap, dtype=np.float32)
    axes = [c.ravel() for c in coords]
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        # Only the box around this segment can be within `cap` of its surface.
        reach = max(ra, rb) + cap + max(spacing)
        box = []
        for d in range(3):
            lo, hi = min(a[d], b[d]) - reach, max(a[d], b[d]) + reach
            box.append(slice(int(np.searchsorted(axes[d], lo)),
                             int(np.searchsorted(axes[d], hi, side="right"))))
        if any(sl.start >= sl.stop for sl in box):
            continue
        px, py, pz = (axes[d][box[d]].reshape([-1 if i == d else 1 for i in range(3)]) - a[d]
                      for d in range(3))
        ab = b - a
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / max(ab @ ab, 1e-9), 0.0, 1.0)
        dist = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
        sd[tuple(box)] = np.minimum(sd[tuple(box)], dist - (ra + t * (rb - ra)))
    return sd


def _wiggle(rng: np.random.Generator, z: np.ndarray, amp: float) -> np.ndarray:
    """A smooth random offset along z (sum of two low-frequency sines)."""
    f = rng.uniform(0.5, 1.5, 2) * 2 * np.pi / (z.max() - z.min() + 1e-6)
    p = rng.uniform(0, 2 * np.pi, 2)
    return amp * (0.6 * np.sin(f[0] * z + p[0]) + 0.4 * np.sin(2 * f[1] * z + p[1]))


def _bumps(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]
           ) -> np.ndarray:
    """A smooth random field with unit standard deviation, for irregular surfaces."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma)
    field -= field.mean()
    return field / (field.std() + 1e-6)


def make_case(seed: int, shape: tuple[int, int, int] = SHAPE,
              spacing: tuple[float, float, float] = SPACING) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image in HU as int16, label as uint8), both of `shape`."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    spacing = tuple(float(s) for s in spacing)
    sx, sy, sz = spacing
    extent = np.array(shape) * np.array(spacing)
    x = np.arange(shape[0], dtype=np.float32)[:, None, None] * sx
    y = np.arange(shape[1], dtype=np.float32)[None, :, None] * sy
    z = np.arange(shape[2], dtype=np.float32)[None, None, :] * sz
    coords = (x, y, z)
    u = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731
    ztop = extent[2]
    image = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    def paint(g: np.ndarray, value: float | np.ndarray, cls: int | None = None,
              where: np.ndarray | None = None) -> np.ndarray:
        """Mix `value` into each voxel by the fraction of it inside `g < 0`; label the voxels
        at least half inside. Returns that mask."""
        g = np.broadcast_to(g, shape).astype(np.float32)
        frac = coverage(g, spacing)
        if where is not None:
            frac *= where
        image[:] = image * (1 - frac) + value * frac
        inside = frac >= 0.5
        if cls is not None:
            label[inside] = cls
        return inside

    # Body size: slim to large patients; organs scale with it, noise grows with it.
    k = u(0.85, 1.1)
    cx, cy = extent[0] / 2 + u(-6, 6), extent[1] / 2 + u(-6, 6)
    a = k * u(150, 165) * (1 - u(0.0, 0.08) * z / ztop)  # narrower towards the neck
    b = k * u(105, 118)
    r_body = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    paint(r_body - 1, -100.0)  # subcutaneous fat
    paint(r_body - u(0.8, 0.88), 35.0)  # muscle and mediastinal soft tissue
    lung_dx, lung_b = u(0.46, 0.52) * a, u(0.62, 0.72) * b
    lung_value = u(-870, -820) + 15 * _bumps(rng, shape, (2, 2, 1))
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lung_a = u(0.34, 0.40) * a * (1 - u(0.2, 0.4) * (z / ztop) ** 3)  # the apex tapers
        r = np.sqrt(((x - cx - side * lung_dx) / lung_a) ** 2
                    + ((y - cy + 0.05 * b) / (lung_b * u(0.95, 1.05))) ** 2)
        lungs |= paint(r - 1, lung_value)
    vessels = gaussian_filter(rng.normal(size=shape).astype(np.float32), (1.0, 1.0, 0.4)) > 0.55
    image[vessels & lungs] = -150.0  # lung vessels, partial-volumed by the blur below
    spine_y = cy + u(0.62, 0.70) * b
    paint(np.sqrt((x - cx) ** 2 + (y - spine_y) ** 2) - k ** 0.5 * u(14, 18), 650.0)
    # Mediastinal fat: blobs of -90 HU around the organs, so the esophagus boundary is partial.
    fat = _bumps(rng, shape, (2.0, 2.0, 0.7)) > 0.25
    mediastinum = np.broadcast_to(((x - cx) / (0.32 * a)) ** 2 + ((y - cy) / (0.8 * b)) ** 2 <= 1,
                                  shape)
    image[fat & mediastinum & (image > 0) & (image < 100)] = -90.0
    contrast = u(90, 220)  # enhancement of the blood pool: varies with bolus timing

    # Trachea: air in a soft-tissue wall, from the top down to the carina; the main bronchi
    # below it are air too but not trachea.
    carina_z = u(0.48, 0.58) * ztop
    tz = np.linspace(carina_z, ztop + 10, 8)
    tx, ty = cx + _wiggle(rng, tz, 3), cy + u(0.0, 0.12) * b + _wiggle(rng, tz, 3)
    t_r = k ** 0.5 * u(8, 11)
    trachea = _tube(coords, spacing, np.stack([tx, ty, tz], axis=1), t_r)
    paint(trachea - 2.5, 60.0)  # the wall
    for side in (-1, 1):
        end = [tx[0] + side * u(35, 50), ty[0] + u(0, 10), carina_z - u(30, 45)]
        paint(_tube(coords, spacing, np.array([[tx[0], ty[0], carina_z + 4], end]),
                    t_r * 0.7), -1000.0)

    # Heart: a bumpy ellipsoid low in the chest, anterior and to the left.
    hc = np.array([cx + u(0.05, 0.2) * a.mean(), cy - u(0.15, 0.3) * b, u(0.18, 0.32) * ztop])
    hr = k * np.array([u(50, 66), u(40, 52), u(45, 60)])
    rot = u(-0.5, 0.5)
    xr = (x - hc[0]) * np.cos(rot) + (y - hc[1]) * np.sin(rot)
    yr = -(x - hc[0]) * np.sin(rot) + (y - hc[1]) * np.cos(rot)
    r = np.sqrt((xr / hr[0]) ** 2 + (yr / hr[1]) ** 2 + ((z - hc[2]) / hr[2]) ** 2)
    heart = paint(r * (1 + 0.06 * _bumps(rng, shape, (4, 4, 1.5))) - 1,
                  40.0 + contrast * u(0.7, 0.9), HEART)

    paint(trachea, -1000.0, TRACHEA, where=(z >= carina_z))  # the lumen, above the carina
    paint(trachea, -1000.0, where=(z < carina_z) & ~heart)  # its rounded end: air, unlabelled

    # Esophagus: thin, low contrast, between trachea and spine, the whole height.
    ez = np.linspace(-10, ztop + 10, 12)
    eso_path = np.stack([cx + u(2, 10) + _wiggle(rng, ez, 4),
                         spine_y - k * u(24, 30) + _wiggle(rng, ez, 3), ez], axis=1)
    eso_r = u(5.0, 7.0)
    eso = _tube(coords, spacing, eso_path, eso_r)
    paint(eso, 35.0 + rng.choice([-1, 1]) * u(8, 18), ESOPHAGUS)
    if rng.random() < 0.5:  # swallowed air in a few slices
        bubble = eso + eso_r - u(2.0, 3.5)  # a thinner tube along the same path
        paint(np.maximum(bubble, np.abs(z - u(0.3, 0.7) * ztop) - 8), -700.0)

    # Aorta: ascending from the heart, an arch, descending left of the spine.
    arch_z = u(0.68, 0.80) * ztop
    asc = np.array([hc[0] - u(10, 25), hc[1] + u(0, 15)])
    desc = np.array([cx + k * u(18, 30), spine_y - k * u(22, 30)])
    t = np.linspace(0, np.pi, 10)
    arch = np.stack([asc[0] + (desc[0] - asc[0]) * (1 - np.cos(t)) / 2,
                     asc[1] + (desc[1] - asc[1]) * (1 - np.cos(t)) / 2,
                     arch_z + u(15, 25) * np.sin(t)], axis=1)
    path = np.concatenate([[[*asc, hc[2]]], arch, [[*desc, -10.0]]])
    paint(_tube(coords, spacing, path, k * np.array([u(13, 16), u(11, 14), u(10, 13)])),
          40.0 + contrast, AORTA)

    # Scanner blur (in-plane; the slice profile is the partial volume above), then noise that
    # is correlated in-plane and grows with the patient's size.
    image = gaussian_filter(image, sigma=(0.5, 0.5, 0.0))
    image += rng.normal(0, k ** 2 * u(10, 28), shape).astype(np.float32)
    image += gaussian_filter(rng.normal(0, 40, shape).astype(np.float32), (1.5, 1.5, 0.0))
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

    A folder whose manifest equals `want` is reused as it is; one of another `format` (drawn
    by another version of the generator, whose defaults may differ too) is replaced; any other
    difference, or a non-empty folder without a manifest, is an error naming the differences. An
    interrupted write leaves nothing half-done behind, and two processes racing for one folder
    both get it.
    """
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if have == want:
            return root
        if have.get("format") != want.get("format"):
            _discard(root, manifest, have)
            return write_once(root, want, fill)
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
    try:
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(tmp, root)
    except OSError:  # another process won the race: keep its copy if it is the same phantom
        shutil.rmtree(tmp, ignore_errors=True)
        if not manifest.is_file() or json.loads(manifest.read_text()) != want:
            raise
    logger.info("wrote %s to %s", want, root)
    return root


def _discard(root: Path, manifest: Path, have: dict[str, Any]) -> None:
    """Move an outdated generated folder aside and delete it (another process may already
    have done so)."""
    logger.warning("%s: phantom of format %s, not the current one: writing it again", root,
                   have.get("format"))
    stale = root.parent / f".{root.name}.stale-{os.getpid()}"
    try:
        os.replace(root, stale)
    except OSError:
        return
    shutil.rmtree(stale, ignore_errors=True)
