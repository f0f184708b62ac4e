"""A procedural brain tumour MR phantom in the Medical Segmentation Decathlon (MSD) layout.

Written like MSD Task01_BrainTumour:

    <root>/dataset.json
    <root>/imagesTr/BRATS_001.nii.gz   4D (X, Y, Z, modality), int16, arbitrary MR units
    <root>/labelsTr/BRATS_001.nii.gz   3D uint8: 0 background, 1 edema, 2 non-enhancing
                                       tumour (necrotic core), 3 enhancing tumour
    <root>/imagesTs/BRATS_0NN.nii.gz   test images, no labels (only when n_test > 0)

so BraTS regions are ET = {3}, TC = {2, 3}, WT = {1, 2, 3}. Each case is a head (scalp, a dark
skull, cerebrospinal fluid, grey and white matter, two ventricles) with one tumour of nested
irregular blobs: a core (2) inside an enhancing rim (3) inside edema (1). The modalities differ
as in real MR, so each region needs the right channel:

- FLAIR: edema bright, CSF dark (tells edema from fluid);
- T1w: tumour a little dark, little else;
- t1gd (T1 with gadolinium): the enhancing rim bright around a dark core (ET and TC);
- T2w: CSF and edema both bright.

Every case has its own head size, tumour place, size and shape, its own intensity gain per
modality (as between scanners: normalise each channel per image), a smooth multiplicative bias
field, partial-volume blur and Rician noise. Deterministic by seed; written once and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from train_fn.phantom import write_once

EDEMA, NON_ENHANCING, ENHANCING = 1, 2, 3
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
MODALITIES = ("FLAIR", "T1w", "t1gd", "T2w")  # MSD Task01's order and spelling
SHAPE = (64, 64, 48)  # voxels (x: right-left, y: posterior-anterior, z: inferior-superior)
SPACING = (3.0, 3.0, 3.0)  # mm
_FORMAT = 1  # bump when drawing changes, so stale caches are not reused

# Tissue intensities per modality (relative to white matter in T1w = 1).
_TISSUES = ("air", "scalp", "skull", "csf", "grey", "white", "edema", "core", "enhancing")
_CONTRAST = {
    #         air   scalp skull csf   grey  white edema core  enhancing
    "FLAIR": (0.0, 0.70, 0.05, 0.10, 0.62, 0.50, 1.00, 0.55, 0.75),
    "T1w": (0.0, 0.90, 0.05, 0.20, 0.65, 0.85, 0.50, 0.35, 0.55),
    "t1gd": (0.0, 0.90, 0.05, 0.20, 0.65, 0.85, 0.50, 0.30, 1.20),
    "T2w": (0.0, 0.60, 0.05, 1.00, 0.60, 0.40, 0.85, 0.75, 0.65),
}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A smooth random field with unit standard deviation (Gaussian-filtered white noise)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _blob(rng: np.random.Generator, coords: tuple[np.ndarray, ...], centre: np.ndarray,
          radii: np.ndarray, bumps: float, field_sigma: float) -> np.ndarray:
    """Normalised distance to an irregular blob: < 1 inside an ellipsoid whose surface is
    pushed in and out by a smooth random field of relative amplitude `bumps`."""
    x, y, z = coords
    r = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                + ((z - centre[2]) / radii[2]) ** 2)
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    return r * (1 + bumps * _smooth_field(rng, shape, field_sigma))


def make_case(seed: int, shape: tuple[int, int, int] = SHAPE,
              spacing: tuple[float, float, float] = SPACING,
              modalities: tuple[str, ...] = MODALITIES) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image of shape (*shape, len(modalities)) as int16, label of `shape` as uint8)."""
    from scipy.ndimage import (
        binary_dilation,
        binary_erosion,
        distance_transform_edt,
        gaussian_filter,
    )

    unknown = [m for m in modalities if m not in _CONTRAST]
    if unknown or not modalities:
        raise ValueError(f"modalities: {unknown or 'none'} not among {list(_CONTRAST)}")
    rng = np.random.default_rng(seed)
    u = rng.uniform
    extent = np.array(shape) * np.array(spacing)
    coords = tuple(np.arange(n)[tuple(slice(None) if i == d else None for i in range(3))]
                   * spacing[d] for d, n in enumerate(shape))
    x, y, z = coords
    centre = extent / 2 + u(-6, 6, 3)
    voxel = min(spacing)

    # Head: scalp, skull, a CSF rim, grey matter over white matter, two ventricles.
    head_r = np.array([u(0.36, 0.42), u(0.40, 0.46), u(0.40, 0.46)]) * extent
    head = _blob(rng, coords, centre, head_r, 0.02, 8)
    brain = head < 1 - 12 / head_r.min()
    tissue = np.zeros(shape, dtype=np.uint8)  # index into _TISSUES
    tissue[head < 1] = 1
    tissue[head < 1 - 4 / head_r.min()] = 2
    tissue[head < 1 - 9 / head_r.min()] = 3
    tissue[brain] = 4
    tissue[head < 1 - u(18, 24) / head_r.min()] = 5
    for side in (-1, 1):
        vent = _blob(rng, coords, centre + np.array([side * u(6, 10), u(-4, 8), u(0, 10)]),
                     np.array([u(4, 7), u(16, 24), u(8, 12)]), 0.15, 4)
        tissue[vent < 1] = 3

    # Tumour: anywhere in the brain, away from its edge.
    inner = binary_erosion(brain, iterations=max(2, round(12 / voxel)))
    depth = distance_transform_edt(inner, sampling=spacing)
    candidates = np.argwhere(depth > 0)
    t_centre = (candidates[rng.integers(len(candidates))] * np.array(spacing)).astype(float)
    t_r = np.array([u(15, 24), u(15, 24), u(13, 21)])
    tumour = (_blob(rng, coords, t_centre, t_r, 0.2, 3) < 1) & binary_erosion(brain, iterations=2)
    if not tumour.any():  # always at least a small tumour at the chosen centre
        tumour[tuple(np.round(t_centre / np.array(spacing)).astype(int))] = True
        tumour = binary_dilation(tumour, iterations=2)
    # Core: an irregular blob inside the tumour, at least one voxel away from its surface, so
    # an enhancing rim always surrounds it.
    tumour_depth = distance_transform_edt(tumour, sampling=spacing)
    core = _blob(rng, coords, t_centre, t_r * u(0.7, 0.9), 0.2, 3) < 1
    core &= binary_erosion(tumour)
    if not core.any():  # keep the deepest voxels
        core = binary_erosion(tumour) & (tumour_depth >= tumour_depth.max())
    # Edema: an irregular, larger blob around the tumour plus a shell that always surrounds it.
    edema = _blob(rng, coords, t_centre + u(-6, 6, 3), t_r * u(1.5, 2.3), 0.3, 4) < 1
    edema |= binary_dilation(tumour, iterations=max(1, round(u(3, 6) / voxel)))
    edema &= brain & ~tumour
    label = np.zeros(shape, dtype=np.uint8)
    label[edema] = EDEMA
    label[tumour] = ENHANCING
    label[core] = NON_ENHANCING
    tissue[edema] = 6
    tissue[tumour] = 8
    tissue[core] = 7

    # Images: contrast table, per-tissue texture, partial-volume blur, bias field, Rician noise.
    texture = 1 + 0.04 * _smooth_field(rng, shape, 1.0)
    noise_sigma = u(0.02, 0.05)
    image = np.empty((*shape, len(modalities)), dtype=np.int16)
    for c, name in enumerate(modalities):
        table = np.asarray(_CONTRAST[name]) * u(0.9, 1.1, len(_TISSUES))
        table[0] = 0.0
        clean = gaussian_filter(table[tissue] * texture, sigma=0.6)
        bias = np.exp(0.12 * _smooth_field(rng, shape, 12.0))
        signal = clean * bias
        noisy = np.hypot(signal + rng.normal(0, noise_sigma, shape),
                         rng.normal(0, noise_sigma, shape))
        image[..., c] = np.clip(noisy * u(400, 1200), 0, 32767).astype(np.int16)
    return image, label


def write_msd_phantom(root: str | Path, n_cases: int, seed: int = 0, n_test: int = 0,
                      shape: tuple[int, int, int] = SHAPE,
                      spacing: tuple[float, float, float] = SPACING,
                      modalities: tuple[str, ...] = MODALITIES) -> Path:
    """Write a BraTS-like MSD folder: `root/dataset.json`, `imagesTr/`, `labelsTr/` with
    `n_cases` labelled cases and `imagesTs/` with `n_test` unlabelled ones.

    `modalities` picks and orders the channels among FLAIR, T1w, t1gd and T2w. Reused when
    `root` already holds the same phantom (see `train_fn.phantom.write_once`).
    """
    import nibabel as nib

    if n_cases < 1 or n_test < 0:
        raise ValueError(f"n_cases must be >= 1 and n_test >= 0, got {n_cases} and {n_test}")
    modalities = tuple(modalities)
    make_case(0, (8, 8, 8), (20.0, 20.0, 20.0), modalities)  # checks modalities up front

    def save(array: np.ndarray, path: Path) -> None:
        img = nib.Nifti1Image(array, np.diag([*spacing, 1.0]))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, path)

    def fill(tmp: Path) -> None:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        training, test = [], []
        for i in range(n_cases + n_test):
            image, label = make_case(seed * 100_003 + i, shape, spacing, modalities)
            name = f"BRATS_{i + 1:03d}.nii.gz"
            if i < n_cases:
                save(image, tmp / "imagesTr" / name)
                save(label, tmp / "labelsTr" / name)
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            else:
                save(image, tmp / "imagesTs" / name)
                test.append(f"./imagesTs/{name}")
        dataset = {
            "name": "BRATS",
            "description": "Synthetic gliomas (segtune phantom): edema, non-enhancing and "
                           "enhancing tumour in multimodal brain MR",
            "reference": "segtune train_fn/phantom_msd.py",
            "licence": "CC-BY-SA 4.0",
            "release": f"phantom format {_FORMAT}",
            "tensorImageSize": "4D",
            "modality": {str(i): m for i, m in enumerate(modalities)},
            "labels": dict(LABELS),
            "numTraining": n_cases,
            "numTest": n_test,
            "training": training,
            "test": test,
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1))

    want = {"format": _FORMAT, "layout": "msd-brats", "cases": n_cases, "test": n_test,
            "seed": seed, "shape": list(shape), "spacing": list(spacing),
            "modalities": list(modalities)}
    return write_once(root, want, fill)
