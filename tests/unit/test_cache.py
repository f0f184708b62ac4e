"""The preprocessed cache (built once, compact, memory-mapped and shared by processes) and the
patch sampler on it (deterministic, balanced, the same with background threads)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, shared_ray

from search.spec import Spec
from train_fn.data import (
    PatchSampler,
    build_entry,
    cache_entry,
    load_volumes,
    missing_from_cache,
    open_entry,
    preprocess_case,
    sample_workers,
)
from train_fn.datasets import find_cases


@pytest.fixture
def data_spec(tmp_path, phantom_root):
    return Spec.model_validate({"data": {"root": str(phantom_root),
                                         "cache_dir": str(tmp_path / "cache")}}).data


def test_an_entry_is_compact_whole_and_reused(data_spec, phantom_root):
    case = find_cases(phantom_root)[0]
    entry = build_entry(case, data_spec)
    assert sorted(p.name for p in entry.iterdir()) == [
        "image.npy", "label.npy", "locations.npz", "meta.json"]
    vol = open_entry(entry)
    assert vol["image"].dtype == np.float16 and vol["label"].dtype == np.uint8
    assert isinstance(vol["image"], np.memmap) and isinstance(vol["label"], np.memmap)
    assert 0.0 <= float(vol["image"].min()) and float(vol["image"].max()) <= 1.0
    # Bounded class locations, each really of its class.
    assert sorted(vol["locations"]) == [0, 1, 2, 3, 4]
    for c, points in vol["locations"].items():
        assert points.dtype == np.int32 and 0 < len(points) <= 10_000
        assert (vol["label"][0][tuple(points.T)] == c).all()
    assert len(vol["locations"][0]) == 10_000  # background: many more voxels, a sample
    # The same float16 values as the float32 preprocessing gives, to float16's precision.
    from train_fn.data import preprocessing

    ref = preprocessing(data_spec)({"image": case.image, "label": case.label})
    np.testing.assert_allclose(vol["image"].astype(np.float32), np.asarray(ref["image"]),
                               atol=1e-3)
    assert (vol["label"] == np.asarray(ref["label"]).round()).all()
    stamp = (entry / "image.npy").stat().st_mtime_ns
    assert build_entry(case, data_spec) == entry
    assert (entry / "image.npy").stat().st_mtime_ns == stamp
    # No temporary folders left beside it.
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def test_other_settings_or_a_rewritten_file_get_a_new_entry(data_spec, phantom_root,
                                                             tmp_path):
    case = find_cases(phantom_root)[0]
    first = cache_entry(data_spec, case)
    other = data_spec.model_copy(update={"window": (-500.0, 500.0)})
    assert cache_entry(other, case) != first
    assert missing_from_cache([case], data_spec) == [case]
    build_entry(case, data_spec)
    assert missing_from_cache([case], data_spec) == []
    assert missing_from_cache([case], data_spec.model_copy(update={"cache": False})) == []


def test_the_driver_builds_the_cache_once_over_ray_tasks(data_spec, phantom_root, monkeypatch,
                                                          caplog):
    ray = pytest.importorskip("ray")
    import search.prepare as api

    monkeypatch.setattr(api, "LARGE_INPUT_BYTES", 0)  # the phantom is small: use Ray anyway
    spec = Spec.model_validate({"data": data_spec.model_dump()})
    split = {"train": ["Patient_01", "Patient_02", "Patient_03"], "val": ["Patient_04"],
             "test": ["Patient_05"]}
    ray.init(address=shared_ray())  # the session's Ray: no start of one of its own
    try:
        with caplog.at_level(logging.INFO, logger="search.prepare"):
            api.build_cache(spec, phantom_root, split)
        progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cache:")]
        assert progress[0].startswith("cache: preprocessing 5 of 5 cases into ")
        assert progress[-1].startswith("cache: 5/5 cases (") and "took" in progress[-1]
        entries = sorted(Path(data_spec.cache_dir).iterdir())
        assert len(entries) == 5
        # Built by Ray's task workers, not in this process.
        builders = {json.loads((e / "meta.json").read_text())["built_by"] for e in entries}
        assert all(b.split(":")[1] != str(os.getpid()) for b in builders)
        stamps = [(e / "image.npy").stat().st_mtime_ns for e in entries]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="search.prepare"):
            api.build_cache(spec, phantom_root, split)
        assert any("all 5 cases preprocessed" in r.getMessage() for r in caplog.records)
        cases = [c for c in find_cases(phantom_root) if c.case_id in split["train"]]
        load_volumes(cases, spec.data, 5)
        assert [(e / "image.npy").stat().st_mtime_ns for e in entries] == stamps
    finally:
        ray.shutdown()


SHARER = """
import json, os, sys, time
from pathlib import Path
from search.spec import Spec
from train_fn.data import load_volumes
from train_fn.datasets import find_cases

def mem():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            k, v = line.split(":")
            out[k] = int(v.split()[0])
    return out

spec = Spec.model_validate({"data": json.loads(sys.argv[1])})
before = mem()
vols = load_volumes(find_cases(sys.argv[2]), spec.data, 5)
total = 0
for v in vols:
    float(v["image"].sum(dtype="float32"))  # reads every page, copies nothing
    total += int(v["image"].nbytes)
after = mem()
shared, current = 0, None
for line in Path("/proc/self/smaps").read_text().splitlines():
    head = line.split()
    if len(head) >= 6 and "-" in head[0] and head[-1].endswith("image.npy"):
        current = head[-1]
    elif len(head) >= 6 and "-" in head[0]:
        current = None
    elif current and line.startswith(("Shared_Clean:", "Shared_Dirty:")):  # fresh: dirty
        shared += int(line.split()[1])
print(json.dumps({"bytes": total, "anon_kb": after["RssAnon"] - before["RssAnon"],
                  "file_kb": after["RssFile"] - before["RssFile"], "shared_kb": shared}))
sys.stdout.flush()
sys.stdin.readline()  # hold the mappings until told to end
"""


@pytest.fixture(scope="module")
def bigger_root(tmp_path_factory):
    """Two SegTHOR-layout cases of 256 x 256 x 96 voxels (12 MiB of float16 image each in the
    cache): large enough that a copy in a process would show against its other memory."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("bigger")
    rng = np.random.default_rng(0)
    for i in (1, 2):
        case = root / "train" / f"Patient_0{i}"
        case.mkdir(parents=True)
        image = rng.normal(0, 200, (256, 256, 96)).astype(np.int16)
        label = np.zeros(image.shape, np.uint8)
        label[100:140, 100:150, 20:60] = 2
        label[60:70, 120:130, :] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), case / f"Patient_0{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), case / "GT.nii.gz")
    return root


def test_processes_on_a_node_share_one_copy_of_the_volumes(tmp_path, bigger_root):
    data_spec = Spec.model_validate({"data": {"source": "segthor", "root": str(bigger_root),
                                              "cache_dir": str(tmp_path / "cache")}}).data
    for case in find_cases(bigger_root):
        build_entry(case, data_spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arg = json.dumps(data_spec.model_dump(mode="json"))
    procs, reports = [], []
    for _ in range(2):  # the second starts while the first holds its mappings
        p = subprocess.Popen([sys.executable, "-c", SHARER, arg, str(bigger_root)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        reports.append(json.loads(p.stdout.readline()))
        procs.append(p)
    for p in procs:
        p.communicate("\n", timeout=60)
    image_kb = reports[0]["bytes"] / 1024
    assert image_kb >= 24 * 1024
    for r in reports:
        # The volumes are file pages (the page cache), not private memory of the process.
        assert r["file_kb"] >= 0.9 * image_kb
        assert r["anon_kb"] < 0.25 * image_kb
    # Both processes map the same pages: the second sees them as shared.
    assert reports[1]["shared_kb"] >= 0.9 * image_kb


def test_patches_are_the_same_with_background_threads(data_spec, phantom_root):
    vols = load_volumes(find_cases(phantom_root)[:3], data_spec, 5)
    inline = PatchSampler(vols, (32, 32, 16), seed=3, num_classes=5, workers=0)
    ahead = PatchSampler(vols, (32, 32, 16), seed=3, num_classes=5, workers=2)
    a, b = list(inline.epoch(2, 7, 2)), list(ahead.epoch(2, 7, 2))
    assert len(a) == len(b) == 7
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype and str(xa.dtype) == "torch.float32"
        assert (xa == xb).all() and (ya == yb).all()
        assert tuple(xa.shape) == (2, 1, 32, 32, 16) and str(ya.dtype) == "torch.int64"
    assert any((x != y).any() for (x, _), (y, _) in zip(a, inline.epoch(3, 7, 2),
                                                        strict=True))
    # A patch larger than the volume is zero-padded to the patch size.
    big = PatchSampler(vols, (160, 32, 16), seed=0, num_classes=5).batch(0, 0, 2)
    assert tuple(big[0].shape) == (2, 1, 160, 32, 16)


def test_patch_centres_are_balanced_over_the_classes_like_monai(data_spec, phantom_root):
    """Each class present is picked as often (as MONAI's RandCropByLabelClassesd with equal
    ratios); the class make-up of the patches matches MONAI's within sampling noise."""
    import torch
    from monai.transforms import ClassesToIndicesd, RandCropByLabelClassesd

    vols = load_volumes(find_cases(phantom_root)[:2], data_spec, 5)
    patch = (32, 32, 16)
    sampler = PatchSampler(vols, patch, seed=0, num_classes=5)
    ours = np.zeros(5)
    for step in range(150):
        _, label = sampler.batch(0, step, 2)
        ours += np.bincount(label.reshape(-1).numpy(), minlength=5)
    index = ClassesToIndicesd(keys="label", num_classes=5)
    crop = RandCropByLabelClassesd(keys=["image", "label"], label_key="label",
                                   spatial_size=patch, num_classes=5, ratios=[1] * 5,
                                   num_samples=1, indices_key="label_cls_indices",
                                   allow_smaller=True, warn=False)
    crop.set_random_state(0)
    items = [index({"image": torch.from_numpy(np.asarray(v["image"], dtype=np.float32)),
                    "label": torch.from_numpy(np.array(v["label"]))}) for v in vols]
    theirs = np.zeros(5)
    rng = np.random.default_rng(1)
    for _ in range(300):
        out = crop(items[rng.integers(2)])[0]["label"]
        theirs += np.bincount(np.asarray(out).reshape(-1).astype(int), minlength=5)
    ours, theirs = ours / ours.sum(), theirs / theirs.sum()
    np.testing.assert_allclose(ours, theirs, rtol=0.25)
    # Far more foreground than uniform cropping would give (the esophagus is thin).
    uniform = np.bincount(np.concatenate([np.asarray(v["label"]).reshape(-1) for v in vols]),
                          minlength=5) / sum(v["label"].size for v in vols)
    assert ours[1] > 3 * uniform[1]


@pytest.mark.parametrize("cpu, setting, workers", [
    (1, None, 1), (2, None, 1), (4, None, 2), (8, None, 4), (32, None, 4), (8, 0, 0),
    (1, 3, 3)])
def test_sampling_threads_come_from_the_trials_cpus(cpu, setting, workers):
    spec = Spec.model_validate({"resources": {"cpu": cpu},
                                "train": {"sample_workers": setting}})
    assert sample_workers(spec.train, spec.resources) == workers


def test_label_values_beyond_the_classes_are_named(data_spec, phantom_root, tmp_path):
    from train_fn.datasets import DataError

    case = find_cases(phantom_root)[0]
    with pytest.raises(DataError, match=r"GT.nii.gz: label values up to 4 outside 0\.\.2$"):
        load_volumes([case], data_spec, num_classes=3)
    # A label that does not fit the cache's uint8 (the data check refuses it first in a run).
    import nibabel as nib

    from train_fn.datasets import Case

    root = tmp_path / "big-label"
    root.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), root / "img.nii.gz")
    label = np.zeros((8, 8, 4), np.int16)
    label[2, 2, 2] = 300
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "seg.nii.gz")
    odd = Case("odd", str(root / "img.nii.gz"), str(root / "seg.nii.gz"))
    with pytest.raises(DataError, match=r"seg.nii.gz: label values outside 0\.\.255 after "
                                        r"preprocessing$"):
        load_volumes([odd], data_spec)


@pytest.mark.parametrize("rewritten", ["label", "image"])
def test_a_rewritten_data_file_is_preprocessed_again_not_served_from_the_cache(
        phantom_root, tmp_path, rewritten):
    import shutil

    import nibabel as nib

    folder = tmp_path / "data" / "train" / "Patient_01"
    shutil.copytree(Path(phantom_root) / "train" / "Patient_01", folder)
    data = Spec.model_validate({"data": {"source": "segthor", "root": str(tmp_path / "data"),
                                         "cache_dir": str(tmp_path / "cache")}}).data
    case = find_cases(tmp_path / "data")[0]
    before = load_volumes([case], data, 5)[0]
    # Same shape, dtype and affine; other voxels: the file a user fixed in place.
    path = Path(getattr(case, rewritten))
    old = nib.load(path)
    values = np.asanyarray(old.dataobj)
    if rewritten == "label":
        new = np.where(values == 2, 4, np.where(values == 4, 2, values)).astype(values.dtype)
    else:
        new = (values[::-1] if values.ndim == 3 else values).copy()
    nib.save(nib.Nifti1Image(new, old.affine, old.header), path)
    assert missing_from_cache([case], data) == [case]
    after = load_volumes([case], data, 5)[0]
    fresh = preprocess_case(case, data)
    assert np.array_equal(after[rewritten], fresh[rewritten])
    assert not np.array_equal(after[rewritten], before[rewritten])
    # The other array is the same preprocessing of an unchanged file.
    other = "image" if rewritten == "label" else "label"
    assert np.array_equal(after[other], before[other])


@pytest.fixture(scope="module")
def built_entry(phantom_root, tmp_path_factory):
    """One case's whole cache entry, built once; each test damages a copy."""
    cache = tmp_path_factory.mktemp("cache-template")
    data = Spec.model_validate({"data": {"root": str(phantom_root),
                                         "cache_dir": str(cache)}}).data
    case = find_cases(phantom_root)[0]
    return build_entry(case, data), case


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


def _zero_label(path: Path) -> None:
    np.save(path, np.zeros_like(np.load(path)))  # same size, shape and dtype


def _edit_spacing(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["spacing"] = [s * 10 for s in meta["spacing"]]  # HD95 would be 10x off
    path.write_text(json.dumps(meta))


DAMAGES = {  # file, damage, the problem named, found without hashing (in trials too)
    "spacing edited": ("meta.json", _edit_spacing, "meta.json was edited or written without "
                       "checksums (its checksum does not match)", True),
    "invalid JSON": ("meta.json", lambda p: p.write_text("{not json"),
                     "meta.json cannot be read (JSONDecodeError)", True),
    "meta.json deleted": ("meta.json", Path.unlink, "no meta.json (a half-written entry)", True),
    "image truncated": ("image.npy", _truncate, "image.npy is ", True),
    "label zeroed": ("label.npy", _zero_label, "label.npy does not match its SHA-256 in "
                     "meta.json (its content changed)", False),
    "locations replaced": ("locations.npz", lambda p: np.savez(p, **{"0": np.zeros((1, 3))}),
                           "locations.npz is ", True),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_entry_is_named_and_rebuilt_to_the_same_content(built_entry, tmp_path,
                                                                  caplog, damage):
    """The driver's check before trials (content hashes) finds every damage; a trial's check
    (no hashing) finds all but a same-size rewrite. Either rebuilds the entry once, with a
    line naming it, to the very arrays of an undamaged cache."""
    import shutil

    import search.prepare as prepare

    template, case = built_entry
    data = Spec.model_validate({"data": {"root": str(Path(case.image).parents[2]),
                                         "cache_dir": str(tmp_path / "cache")}})
    entry = tmp_path / "cache" / template.name
    shutil.copytree(template, entry)
    name, damage_fn, said, quick = DAMAGES[damage]
    damage_fn(entry / name)
    assert (entry / "meta.json").exists() == (damage != "meta.json deleted")
    split = {"train": [case.case_id], "val": [], "test": []}
    with caplog.at_level(logging.INFO):
        if quick:  # as a trial opens it
            vol = load_volumes([case], data.data, 5)[0]
        else:
            assert missing_from_cache([case], data.data) == []  # the quick check passes it
            prepare.build_cache(data, Path(case.image).parents[2], split)
            vol = open_entry(entry)
    lines = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"cache: {entry}: {said}")
    assert lines[0].endswith("; rebuilding it")
    ref = open_entry(template)
    for key in ("image", "label", "spacing", "label_max"):
        assert np.array_equal(vol[key], ref[key]), key
    assert {c: v.tolist() for c, v in vol["locations"].items()} == {
        c: v.tolist() for c, v in ref["locations"].items()}
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # nothing left aside
    caplog.clear()
    with caplog.at_level(logging.INFO):  # whole again: checked, not rebuilt
        prepare.build_cache(data, Path(case.image).parents[2], split)
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]
