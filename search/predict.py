"""`python -m search predict RUN_DIR --input ... --output DIR`: segment images that have no
labels with a run's best trial or soup, as `nnUNetv2_predict` does: the run's preprocessing,
sliding-window inference, the preprocessing inverted, one `<name>.nii.gz` per input in the
input's own grid and affine, voxels holding the run's label ids.

The same code predicts for `evaluate` (which then scores the files), so both give the same
labels for the same image. From Python, two lines:

    model = load_model("runs/novograd", "greedy")   # best | greedy | uniform | a .pt path
    labels = model.predict("new_ct.nii.gz")           # or an array with its affine/spacing
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search import inputs as input_checks
from search.errors import ArgumentError, PredictError, RunFolderError
from search.lazy import LazyModule
from search.runfolder import MODELS, RunFolder, use_every_core
from search.spec import Spec
from search.storage import join, load_run_checkpoint
from train_fn.data import preprocessing
from train_fn.errors import DataError
from train_fn.files import atomic_write
from train_fn.models import build_model

if TYPE_CHECKING:
    import torch

checkpoint_io = LazyModule("train_fn.checkpoint")
metrics = LazyModule("train_fn.metrics")
loop = LazyModule("train_fn.loop")

logger = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".nii")


def image_name(path: str | Path) -> str:
    """The file name without `.nii` / `.nii.gz`: `a/Patient_41.nii.gz` -> `Patient_41`."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


@dataclass
class Segmenter:
    """A run's network with the run's preprocessing: `predict` an image file or array into a
    label map on the input's own voxel grid."""

    name: str  # best, greedy, uniform, or the checkpoint's name
    checkpoint: str
    spec: Spec  # the run's spec with the model's own searched values filled in
    net: torch.nn.Module
    device: torch.device
    labels: dict[int, str]  # label id -> name, as the run was trained
    channels: int  # input channels (modalities) the network takes
    mirror: bool = False  # test-time mirroring: the mean over the 8 flips of the 3 axes
    overlap: float | None = None  # sliding-window overlap (default: the spec's sw_overlap)

    def __post_init__(self):
        self.net.eval()
        self._from_file = preprocessing(self.spec.data, meta=True, label=False)
        self._from_array = preprocessing(self.spec.data, meta=True, label=False, load=False)

    def predict(self, image: str | Path | np.ndarray, affine: np.ndarray | None = None,
                spacing: tuple[float, float, float] | None = None) -> np.ndarray:
        """Labels (uint8, the shape of the image's first 3 axes) of a NIfTI file, or of an
        array laid out as NIfTI stores it, (X, Y, Z) or (X, Y, Z, C), with its 4 x 4 affine
        or, for an axis-aligned image, its voxel `spacing` in mm."""
        if isinstance(image, (str, Path)):
            check_image(Path(image), self.channels)
            return self._segment(self._from_file, {"image": str(image)})
        return self._segment(self._from_array, {"image": self._meta_tensor(image, affine,
                                                                           spacing)})

    def predict_file(self, src: str | Path | list[Path] | tuple[Path, ...],
                     dst: str | Path, probabilities: str | Path | None = None) -> np.ndarray:
        """Predict the NIfTI `src` (or a case's channel files, one 3D volume each, in channel
        order) and write its labels to `dst` (a `.nii.gz` with `src`'s affine; written to a
        temporary file and renamed, so a kill leaves no half file), and with `probabilities`
        the class probabilities there (`.npz`, key `probabilities`, float16, (classes, X, Y,
        Z) on `src`'s grid). Returns the labels."""
        import nibabel as nib

        kept: dict[str, np.ndarray] | None = {} if probabilities else None
        if isinstance(src, (str, Path)):
            check_image(Path(src), self.channels)
            affine = nib.load(src).affine
            labels = self._segment(self._from_file, {"image": str(src)}, kept)
        else:
            if len(src) != self.channels:
                raise PredictError(f"{len(src)} channel file(s) ({src[0]}, ...), the run's "
                                   f"model takes {self.channels}")
            volumes = [nib.load(f) for f in src]
            affine = volumes[0].affine
            stacked = np.stack([np.asanyarray(v.dataobj) for v in volumes], axis=-1)
            labels = self._segment(self._from_array, {"image": self._meta_tensor(
                stacked, affine, None)}, kept)
        if probabilities:
            atomic_write(Path(probabilities), lambda tmp: np.savez_compressed(
                tmp, probabilities=kept["probabilities"].astype(np.float16)), suffix=".npz")
        save_labels(labels, affine, Path(dst))
        return labels

    def _meta_tensor(self, image: np.ndarray, affine, spacing):
        import torch
        from monai.data import MetaTensor

        image = np.asarray(image)
        if image.ndim not in (3, 4):
            raise PredictError(f"image array of shape {image.shape}: expected (X, Y, Z), or "
                               "(X, Y, Z, C) with channels last as NIfTI stores them")
        if (affine is None) == (spacing is None):
            raise PredictError("an image array needs its affine (4 x 4) or its spacing "
                               "(3 values, mm), one of the two: the run's preprocessing "
                               "works in mm")
        if affine is None:
            affine = np.diag([*(float(s) for s in spacing), 1.0])
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise PredictError(f"affine of shape {affine.shape}: expected 4 x 4")
        # As LoadImaged(ensure_channel_first) gives a file: float32, channels first.
        data = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)
        if data.shape[0] != self.channels:
            raise PredictError(f"image array of shape {image.shape}: {data.shape[0]} "
                               f"channel(s), the run's model takes {self.channels}")
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
                          affine=torch.from_numpy(affine))

    def _segment(self, transform, item: dict[str, Any],
                 kept: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Labels of one input; with `kept`, its class probabilities go there too."""
        import torch

        item = transform(item)
        train = self.spec.train
        overlap = train.sw_overlap if self.overlap is None else self.overlap
        args = (self.net, item["image"].as_tensor(), train.patch_size, train.sw_batch_size,
                overlap, self.device)
        with torch.no_grad():
            if self.mirror or kept is not None:
                prob = metrics.probabilities(*args, mirror=self.mirror)
                pred = prob.argmax(0, keepdim=True)
            else:
                pred = metrics.predict(*args)
        if kept is not None:
            kept["probabilities"] = self._invert(prob, item, transform, nearest=False)
        return self._invert(pred.float(), item, transform).round().astype(np.uint8)[0]

    @staticmethod
    def _invert(values, item: dict[str, Any], transform, nearest: bool = True) -> np.ndarray:
        """`values` (channels first, on the preprocessed grid) back on the input's grid: they
        take the image's record of spatial steps, so inverting it undoes them (nearest
        neighbour for labels: labels stay labels)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        if not item["image"].applied_operations:  # no spatial step to undo
            return values.numpy()
        item["pred"] = MetaTensor(values, meta=item["image"].meta,
                                  applied_operations=item["image"].applied_operations)
        invert = Invertd(keys="pred", transform=transform, orig_keys="image",
                         nearest_interp=nearest)
        return invert(item)["pred"].as_tensor().numpy()


def save_labels(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a label map as NIfTI atomically: a kill leaves the old file or none."""
    import nibabel as nib

    # nibabel picks the format by the name: the temporary file ends in .nii.gz too.
    atomic_write(path, lambda tmp: nib.save(nib.Nifti1Image(labels, affine), tmp),
                 suffix=".nii.gz")


def open_run(run_dir: str | Path) -> RunFolder:
    """A run folder that can predict, or one line saying why it is not one."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise PredictError(f"{run_dir}: no such run folder (give a segtune run folder, "
                           "e.g. runs/novograd)")
    for path in (folder.run_json, folder.spec_yaml):
        if not path.is_file():
            raise PredictError(f"{run_dir}: not a segtune run folder (no {path.name}; a run "
                               "folder holds run.json, spec.yaml and summary.json)")
    return folder


def model_spec(spec: Spec, state: dict[str, Any], folder: RunFolder, name: str) -> Spec:
    """The run's spec with each searched setting at the model's own value: from the
    checkpoint's `config` (trials and soups record resolved values), else from the run's best
    trial (soups made before soups recorded values, checkpoints without a config)."""
    searched = spec.searched()
    if not searched:
        return spec
    params: dict[str, Any] = {}
    if folder.is_finished():
        best = folder.summary().best
        params.update(best.config if best else {})
    config = state.get("config") or {}
    # A search leaf is a dict ({type, low, high}); a resolved value never is.
    params.update({k: v for k, v in config.items() if k in searched and not isinstance(v, dict)})
    missing = [k for k in searched if k not in params]
    if missing:
        raise PredictError(f"--model {name}: the checkpoint's config has no value for the "
                           f"searched {', '.join(missing)} and the run has no best trial to "
                           "take one from")
    return spec.resolve({k: params[k] for k in searched})


def load_weights(run_dir: Path, model: str) -> tuple[str, Path | str, dict[str, Any]]:
    """(name, checkpoint file, checkpoint state) of `best`, a soup, or a checkpoint file or
    folder path. The best trial's checkpoint is a URI when the run keeps its checkpoints in an
    object store (downloaded to be read)."""
    folder = RunFolder(run_dir)
    if model == "best":
        best = folder.summary().best
        if not best:
            raise RunFolderError(f"{run_dir}: the run has no best trial yet (summary.json "
                                 "'best' is empty: the search did not finish)")
        checkpoint = best.checkpoint
        return ("best", join(folder.experiment_location, checkpoint, "checkpoint.pt"),
                load_run_checkpoint(run_dir, checkpoint))
    if model in ("greedy", "uniform"):
        # summary.json names the soup set in use (the `soup` link may lag it after a kill).
        soup = (folder.summary().soups or {}).get(model) if folder.is_finished() else None
        weights = soup.weights if soup else None
        path = run_dir / (weights or f"soup/{model}/checkpoint.pt")
        if not path.is_file():
            raise RunFolderError(f"{path}: no {model} soup in this run (soup.enabled was off "
                                 f"or the search did not finish; make one with: python -m "
                                 f"search soup {run_dir})")
        return model, path, checkpoint_io.load_checkpoint(path.parent)
    path = checkpoint_file(model)
    return checkpoint_label(path), path, input_checks.read_checkpoint(path, model)


def checkpoint_file(model: str, option: str = "--model") -> Path:
    """The checkpoint file `--model` names (a folder means its `checkpoint.pt`), or one line
    saying there is none."""
    path = Path(model)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        looks_like_path = path != Path(model) or len(path.parts) > 1 or path.suffix
        raise ArgumentError(f"{option} {model}: not one of {', '.join(MODELS)} and no "
                            "checkpoint file there" + (f" ({path} does not exist)"
                                                       if looks_like_path else ""))
    return path


def checkpoint_label(path: Path) -> str:
    """A checkpoint file's name in outputs (`eval/<name>-<split>/`): its folder's for a
    `checkpoint.pt`, else its stem (exactly the file named: `DIR/mymodel.pt` is not
    `DIR/checkpoint.pt`); never `best`, `greedy` or `uniform`, whose outputs are the run's."""
    name = (path.parent.name if path.name == "checkpoint.pt" else path.stem) or "checkpoint"
    return f"{name}-file" if name in MODELS else name


def load_model(run_dir: str | Path, model: str = "best", device: str | None = None
               ) -> Segmenter:
    """A run's `best` trial, `greedy` or `uniform` soup, or a checkpoint file or folder, with
    the run's preprocessing, ready to `predict`. `device` defaults to the spec's
    `train.device` (auto: CUDA when there is one)."""
    folder = open_run(run_dir)
    chosen = check_device(device or folder.spec.train.device)
    name, path, state = load_weights(folder.path, model)  # a wrong --model: one line, first
    logger.info("predict: loading model %s (%s) on %s", model, path, chosen)
    spec = model_spec(folder.spec, state, folder, model)
    arch = state.get("architecture") or {}
    try:  # the label names; the data may not be on this machine
        ds = folder.dataset
        labels, channels, classes = dict(ds.labels), len(ds.channels), ds.num_classes
    except DataError:
        if not arch:
            raise
        classes, channels = arch["out_channels"], arch["in_channels"]
        labels = {int(k): str(v) for k, v in (spec.data.labels or {}).items()} or {
            i: str(i) for i in range(1, classes)}
    input_checks.check_finite_weights(state.get("model") or {}, path, model)
    net = build_model(spec.model, channels, classes)
    try:
        net.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else "no 'model' weights"
        raise PredictError(f"--model {model}: {path} does not fit this run's network "
                           f"({first})") from None
    return Segmenter(name, str(path), spec, net.to(chosen), chosen, labels, channels)


def check_device(choice: str) -> torch.device:
    """The device `choice` (auto, cpu, cuda, cuda:N), or one line when it is not here."""
    import torch

    device = loop.pick_device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        raise PredictError(f"--device {choice}: no CUDA device on this machine (torch "
                           f"{torch.__version__}, {build}); use --device cpu or auto")
    return device


def check_image(path: Path, channels: int) -> None:
    """Refuse, in one line, a file that is not a 3D (or 4D multi-channel) NIfTI image with
    `channels` channels. Reads the header only."""
    import nibabel as nib

    if not path.name.endswith(SUFFIXES):
        raise PredictError(f"{path}: not a NIfTI image (expected a .nii or .nii.gz file)")
    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    try:
        shape = nib.load(path).shape
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for a bad file
        text = str(err).splitlines()[0] if str(err) else ""
        raise PredictError(f"{path}: not a readable NIfTI image ({type(err).__name__}"
                           f"{': ' + text if text else ''})") from None
    if len(shape) not in (3, 4):
        raise PredictError(f"{path}: image has {len(shape)} dimensions {tuple(shape)}; "
                           "expected 3 (or 4 with channels last)")
    found = 1 if len(shape) == 3 else shape[3]
    if found != channels:
        raise PredictError(f"{path}: {found} channel(s), the run's model takes {channels}")


def find_images(inputs: list[str | Path]) -> list[Path]:
    """The images named: every `*.nii` / `*.nii.gz` in a folder (sorted; hidden files, such
    as a half-written temporary file, skipped), or the files themselves."""
    images: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.is_file()
                           and p.name.endswith(SUFFIXES) and not p.name.startswith("."))
            if not found:
                raise PredictError(f"--input {entry}: no NIfTI images (*.nii, *.nii.gz) in "
                                   "this folder")
            images.extend(found)
        elif entry.exists():
            images.append(entry)
        else:
            raise PredictError(f"--input {entry}: no such file or folder")
    if not images:
        raise PredictError("--input: give a folder of NIfTI images or one or more .nii / "
                           ".nii.gz files")
    # A file named twice (also as part of a folder) is predicted once.
    first: dict[Path, Path] = {}
    for image in images:
        first.setdefault(image.resolve(), image)
    return list(first.values())


def is_label_file(path: str | Path, data: Any) -> bool:
    """Whether `path` is a label file of the run's data layout: a SegTHOR folder holds
    `GT.nii.gz` beside each image, an MSD (and nnU-Net raw) folder keeps its labels in
    `labelsTr/` and `labelsTs/`, a `folder` dataset names them by `data.label_pattern` (where
    the image pattern matches the file too, the pattern with more fixed text wins:
    `{case}_seg.nii.gz` over `{case}.nii.gz`)."""
    text, nifti = Path(path).resolve().as_posix(), r"\.nii(?:\.gz)?"
    if data.source in ("segthor", "phantom"):
        return bool(re.search(rf"(?:^|/)GT{nifti}$", text))
    if data.source in ("msd", "brats_phantom"):
        return bool(re.search(rf"(?:^|/)labelsT[rs]/[^/]+{nifti}$", text))

    def matches(pattern: str) -> bool:
        tail = re.escape(pattern).replace(re.escape("{case}"), "[^/]+")
        return bool(re.search(f"(?:^|/){tail}$", text))
    if not matches(data.label_pattern):
        return False
    return not matches(data.image_pattern) or len(data.label_pattern) > len(data.image_pattern)


def skip_labels(images: list[Path], data: Any) -> list[Path]:
    """`images` without the label files of the run's data layout (`is_label_file`), each
    skipped with a line; none left is an error."""
    kept = [i for i in images if not is_label_file(i, data)]
    for image in images:
        if image not in kept:
            logger.warning("skipped %s: a label file of the %s layout, not an image", image,
                           data.source)
    if images and not kept:
        raise PredictError(f"--input: only label files ({', '.join(map(str, images))}); "
                           "give the images")
    return kept


# nnU-Net's input naming: `<case>_0000.nii.gz` is channel 0 of case `<case>`, `_0001` its
# channel 1, ...
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    """One image to segment: a file (3D, or 4D with the channels last), or one 3D file per
    channel (nnU-Net's `_0000`, `_0001`, ...). `name` names its output."""

    name: str
    files: tuple[Path, ...]


def group_cases(images: list[Path], channels: int) -> list[InputCase]:
    """`images` as cases, the nnU-Net way: files `<case>_0000`, `<case>_0001`, ... of one
    folder are the channels of case `<case>` (named without the suffix); a file without the
    suffix is a case by itself, and so is one whose folder holds no `<case>_0000` (so
    `Patient_0001.nii.gz` alone stays `Patient_0001`). Channel files that do not make the
    model's `channels` (a gap, or more than it takes) are one line."""
    groups: dict[tuple[Path, str], dict[int, Path]] = {}
    for image in images:
        found = CHANNEL_FILE.match(image_name(image))
        if found:
            key = (image.resolve().parent, found["case"])
            groups.setdefault(key, {})[int(found["channel"])] = image
    cases: dict[tuple[Path, str], InputCase] = {}
    for image in images:
        found = CHANNEL_FILE.match(image_name(image))
        key = (image.resolve().parent, found["case"]) if found else None
        if key is None or 0 not in groups[key]:
            cases[image.resolve().parent, image_name(image)] = InputCase(image_name(image),
                                                                         (image,))
        elif key not in cases:
            cases[key] = InputCase(key[1], _channel_files(key[1], groups[key], channels))
    return list(cases.values())


def _channel_files(case: str, files: dict[int, Path], channels: int) -> tuple[Path, ...]:
    """The channel files of one case in channel order, or one line why they are not the
    model's channels."""
    if len(files) == 1:  # `<case>_0000` alone: one file, 3D or 4D, checked as any image
        return (files[0],)
    given = sorted(files)
    if given != list(range(channels)):
        shown = ", ".join(f"_{c:04d}" for c in given)
        wanted = ("1 channel: give one file per case" if channels == 1 else
                  f"{channels} channels: _0000 to _{channels - 1:04d}")
        raise PredictError(f"--input: case {case} has the channel files {shown} "
                           f"({files[given[0]].parent}, nnU-Net's _XXXX channel suffix); the "
                           f"run's model takes {wanted}")
    return tuple(files[c] for c in given)


def check_case(case: InputCase, channels: int) -> None:
    """Refuse, in one line, a case whose file is not an image of `channels` channels, or
    whose channel files are not single 3D volumes on one grid."""
    import nibabel as nib

    if len(case.files) == 1:
        check_image(case.files[0], channels)
        return
    for path in case.files:
        check_image(path, 1)
    first = nib.load(case.files[0])
    for path in case.files[1:]:
        other = nib.load(path)
        if other.shape != first.shape or not np.allclose(other.affine, first.affine,
                                                         atol=1e-4):
            raise PredictError(f"{path}: shape {other.shape} and affine differ from "
                               f"{case.files[0].name}'s {first.shape}: the channel files of a "
                               "case share one voxel grid")


def plan_outputs(cases: list[InputCase], out_dir: Path) -> list[tuple[InputCase, Path]]:
    """(case, output) pairs, refusing two cases of one name and an output that would
    overwrite its input."""
    pairs, seen = [], {}
    for case in cases:
        dst = out_dir / f"{case.name}.nii.gz"
        if dst in seen:
            raise PredictError(f"--input: {seen[dst]} and {case.files[0]} would both be "
                               f"written to {dst}; predict them into separate --output "
                               "folders")
        if any(dst.resolve() == f.resolve() for f in case.files):
            raise PredictError(f"--output {out_dir}: {dst} would overwrite its input; "
                               "choose another --output folder")
        seen[dst] = case.files[0]
        pairs.append((case, dst))
    return pairs


def predict_files(run_dir: str | Path, inputs: list[str | Path], out_dir: str | Path,
                  model: str = "best", device: str | None = None, tta: bool = False,
                  probabilities: bool = False, overlap: float | None = None,
                  skip_existing: bool = False) -> list[Path]:
    """Segment each image of `inputs` (folders or files) into `out_dir/<name>.nii.gz` (and
    with `probabilities`, `<name>.npz`). Every input is checked before anything is written.
    `tta`: test-time mirroring; `overlap`: the sliding window's; `skip_existing`: inputs
    whose output is there already are skipped (an interrupted folder continues). Returns the
    files written."""

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if overlap is not None and not 0 <= overlap < 1:
        raise ArgumentError(f"--overlap {overlap}: the sliding windows' overlap is a fraction "
                            "in [0, 1), e.g. 0.5")
    folder = open_run(run_dir)  # a wrong folder is named before the inputs are looked at
    images = skip_labels(find_images(inputs), folder.spec.data)
    segmenter = load_model(run_dir, model, device)
    segmenter.mirror, segmenter.overlap = tta, overlap
    cases = group_cases(images, segmenter.channels)
    for case in cases:
        check_case(case, segmenter.channels)
    # Read to the end and finite, all before the first write.
    input_checks.check_inputs([f for case in cases for f in case.files])
    pairs = plan_outputs(cases, out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictError(f"--output {out_dir}: a file, not a folder")
    use_every_core()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case, dst in pairs:
        src = case.files[0] if len(case.files) == 1 else case.files
        npz = dst.with_name(f"{case.name}.npz") if probabilities else None
        if skip_existing and dst.is_file() and (npz is None or npz.is_file()):
            logger.info("%s: done already (%s), skipped", case.name, dst)
            continue
        labels = segmenter.predict_file(src, dst, npz)
        found = sorted(int(v) for v in np.unique(labels) if v)
        logger.info("%s -> %s (labels %s)", ", ".join(map(str, case.files)), dst, found)
        written.append(dst)
    return written


__all__ = ["InputCase", "PredictError", "Segmenter", "find_images", "group_cases",
           "image_name", "load_model", "predict_files", "save_labels"]
