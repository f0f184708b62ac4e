"""The spec's sections (data, model, optimizer, layers, schedule, train, search, resources,
soup, cv, tracking, lr_finder): each setting's type, default and range."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from search.spec.leaves import (
    BIG,
    CategoricalLeaf,
    Fraction,
    NonNegative,
    Positive,
    Searchable,
    Seed,
    Size,
    _alternatives,
    _Section,
)
from search.spec.messages import did_you_mean
from train_fn.models import MODELS
from train_fn.optim import MODES, OPTIMIZERS

Blocks = Annotated[int, Field(ge=0, le=64)]  # residual blocks at one level
HU = Annotated[float, Field(ge=-BIG, le=BIG)]

# At most this many voxels in one step's patches (2 x 512^3): a larger step cannot be held by
# any device's memory, and Ray would only fail every trial with its own tracebacks.
MAX_STEP_VOXELS = 2 * 512**3


# ---------------------------------------------------------------------------------------------
# Sections.
def _known_name(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; {did_you_mean(value, list(registry))}")
    return value




class DataSpec(_Section):
    """Where the cases are, how they are preprocessed, and how they are split (see
    train_fn.datasets for the formats)."""

    source: Literal["phantom", "brats_phantom", "segthor", "msd", "folder"] = "phantom"
    root: str | None = None  # the dataset folder; phantoms: their cache folder
    cases: int = Field(12, ge=4, le=1000)  # phantoms only
    image_pattern: str | None = None  # folder: e.g. images/{case}.nii.gz (relative to root)
    label_pattern: str | None = None  # folder: e.g. labels/{case}.nii.gz
    labels: dict[int, str] | None = None  # foreground label id -> name; default: the format's
    regions: dict[str, tuple[int, ...]] | None = None  # scored name -> label ids; default: each
    orientation: str | None = None  # e.g. RAS; default: as stored
    spacing: tuple[Positive, Positive, Positive] | None = None  # resample to this (mm)
    intensity: Literal["window", "zscore"] | None = None  # default: window (CT), zscore (MR)
    window: tuple[HU, HU] = (-1000.0, 1000.0)  # HU, mapped to [0, 1]
    crop_foreground: StrictBool = False  # crop to the bounding box of the non-air voxels
    cache: StrictBool = True  # keep preprocessed volumes on disk for later runs and trials
    cache_dir: str | None = None  # default: $SEGTUNE_CACHE/preprocessed
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: Seed = 0

    @model_validator(mode="after")
    def _check(self):
        if self.source in ("segthor", "msd", "folder") and not self.root:
            raise ValueError(f"data.source {self.source} needs data.root, the dataset folder")
        patterns = (self.image_pattern, self.label_pattern)
        if self.source == "folder":
            for key, value in zip(("image_pattern", "label_pattern"), patterns, strict=True):
                if not value or value.count("{case}") != 1:
                    raise ValueError(f"data.{key} must be a path relative to data.root with "
                                     f"one {{case}} wildcard, e.g. images/{{case}}.nii.gz; got "
                                     f"{value!r}")
        elif any(patterns):
            raise ValueError("data.image_pattern and data.label_pattern are for data.source "
                             f"folder, not {self.source}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1")
        if self.window[0] >= self.window[1]:
            raise ValueError(f"data.window must be (low, high) with low < high, got {self.window}")
        if self.orientation is not None and sorted(
                next((i for i, pair in enumerate(("LR", "PA", "IS")) if c in pair), -1)
                for c in self.orientation) != [0, 1, 2]:
            raise ValueError(f"data.orientation must be three axis codes, one of L/R, P/A and "
                             f"I/S each, e.g. RAS; got {self.orientation!r}")
        return self


class ModelSpec(_Section):
    """The network. Only the keys the named model takes (unset: its default, see
    train_fn.models.MODELS); all trials share `init_seed`, so their weights can be souped."""

    name: str = "unet"
    channels: tuple[Size, ...] | None = None  # unet, dynunet (filters per level)
    strides: tuple[Size, ...] | None = None  # unet, dynunet (dynunet: first is usually 1)
    num_res_units: int | None = Field(None, ge=0, le=16)  # unet
    kernel_size: int | None = Field(None, ge=1, le=15)  # dynunet, mednext
    res_block: StrictBool | None = None  # dynunet
    norm: Literal["instance", "batch"] | None = None  # dynunet
    deep_supervision: StrictBool | None = None  # dynunet, mednext
    deep_supr_num: int | None = Field(None, ge=1, le=16)  # dynunet
    init_filters: int | None = Field(None, ge=1, le=1024)  # segresnet, mednext
    blocks_down: tuple[Blocks, ...] | None = None  # segresnet, mednext
    blocks_up: tuple[Blocks, ...] | None = None  # segresnet, mednext
    blocks_bottleneck: int | None = Field(None, ge=1, le=64)  # mednext
    dropout: float | None = Field(None, ge=0, lt=1)  # unet, dynunet, segresnet
    init_seed: Seed = 0  # one init per search: all trials start from the same weights

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_name(v, MODELS, "model")

    @model_validator(mode="after")
    def _check(self):
        takes = MODELS[self.name].defaults
        for key in type(self).model_fields:
            if key not in ("name", "init_seed") and getattr(self, key) is not None \
                    and key not in takes:
                raise ValueError(f"model.{key} is not an option of model.name {self.name!r}; "
                                 f"{self.name} takes: {', '.join(takes)}")
        o = {k: (d if getattr(self, k) is None else getattr(self, k)) for k, d in takes.items()}
        if "strides" in o and len(o["strides"]) != len(o["channels"]) - (self.name == "unet"):
            want = "one entry fewer than" if self.name == "unet" else "as many entries as"
            raise ValueError(f"model.strides needs {want} model.channels "
                             f"({len(o['channels'])}), got {len(o['strides'])}")
        if self.name == "segresnet" and o["init_filters"] % 8:
            raise ValueError("model.init_filters must be a multiple of 8 for segresnet (its "
                             f"GroupNorm has 8 groups), got {o['init_filters']}")
        if "blocks_up" in o and len(o["blocks_up"]) != len(o["blocks_down"]) - (
                self.name == "segresnet"):
            want = "one entry fewer than" if self.name == "segresnet" else "as many entries as"
            raise ValueError(f"model.blocks_up needs {want} model.blocks_down "
                             f"({len(o['blocks_down'])}), got {len(o['blocks_up'])}")
        return self


class OptimizerSpec(_Section):
    """`lr` for every optimizer; the other keys only for the optimizers that take them (unset:
    the optimizer's own default, see train_fn.optim.OPTIMIZERS)."""

    name: Searchable(str) = "novograd"
    lr: Searchable(Positive) = 1e-3
    beta1: Searchable(Fraction) | None = None
    beta2: Searchable(Fraction) | None = None
    weight_decay: Searchable(NonNegative) | None = None
    grad_averaging: Searchable(StrictBool) | None = None
    momentum: Searchable(Fraction) | None = None
    nesterov: Searchable(StrictBool) | None = None
    eps: Positive | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, v: Any) -> Any:
        if isinstance(v, CategoricalLeaf):
            for choice in v.choices:
                _known_name(choice, OPTIMIZERS, "optimizer")
            return v
        if not isinstance(v, str):
            raise ValueError("optimizer.name is a fixed name or a categorical of names")
        return _known_name(v, OPTIMIZERS, "optimizer")

    def names(self) -> list[str]:
        """The optimizers this section can resolve to."""
        return list(self.name.choices) if isinstance(self.name, CategoricalLeaf) else [self.name]

    @model_validator(mode="after")
    def _takes(self):
        for key in type(self).model_fields:
            value = getattr(self, key)
            if key in ("name", "lr") or value is None:
                continue
            for name in _names_for(value, self.names()):
                takes = OPTIMIZERS[name].defaults
                if key not in takes:
                    hint = (" (make it conditional: when: {optimizer.name: [...]})"
                            if len(self.names()) > 1 else "")
                    raise ValueError(
                        f"optimizer.{key} is not a parameter of optimizer.name {name!r}; "
                        f"{name} takes: lr, {', '.join(takes)}{hint}"
                    )
        return self


def _names_for(value: Any, names: list[str]) -> list[str]:
    """The optimizer names a setting applies to: those its `when` on optimizer.name allows
    (for each alternative), else all."""
    leaves = _alternatives(value)
    if not leaves:
        return names
    out: list[str] = []
    for leaf in leaves:
        allowed = (leaf.when or {}).get("optimizer.name")
        if allowed is None:
            return names
        out += [n for n in (allowed if isinstance(allowed, list) else [allowed]) if n in names]
    return out


class LayersSpec(_Section):
    """Layer-wise LR multipliers (see train_fn.optim). `mode: bands` takes the five band keys,
    `ramp` takes `start` and `end`, `geometric` takes `decay`; unset multipliers are 1."""

    mode: Literal["bands", "ramp", "geometric"] = "bands"
    early_encoder: Searchable(NonNegative) | None = None
    deep_encoder: Searchable(NonNegative) | None = None
    middle: Searchable(NonNegative) | None = None
    decoder: Searchable(NonNegative) | None = None
    head: Searchable(NonNegative) | None = None
    start: Searchable(NonNegative) | None = None  # ramp: multiplier at encoder level 0
    end: Searchable(NonNegative) | None = None  # ramp: multiplier at the head
    decay: Searchable(Positive) | None = None  # geometric: factor per step down from the head
    no_decay_norm_bias: StrictBool = False  # no weight decay on biases and norm scales

    @model_validator(mode="after")
    def _takes(self):
        for mode, keys in MODES.items():
            if mode == self.mode:
                continue
            for key in keys:
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"layers.{key} belongs to layers.mode {mode!r}, not {self.mode!r}; "
                        f"{self.mode} takes: {', '.join(MODES[self.mode])}"
                    )
        return self


class ScheduleSpec(_Section):
    """Warmup then a cosine (MONAI WarmupCosineSchedule). Schedule-free optimizers take only
    the warmup (as their own `warmup_steps`); the cosine keys do not apply to them."""

    warmup_fraction: Searchable(Fraction) = 0.1
    warmup_multiplier: Searchable(Annotated[float, Field(ge=0, le=1)]) | None = None  # def. 0
    cycles: Searchable(Positive) | None = None  # default 0.5: a half cosine down to 0


class TrainSpec(_Section):
    epochs: int = Field(10, ge=1, le=100_000)
    steps_per_epoch: int = Field(20, ge=1, le=1_000_000)
    # patches per step; batch 1 falls onto a slow conv3d path
    batch_size: int = Field(2, ge=2, le=1024)
    patch_size: tuple[Size, Size, Size] = (48, 48, 32)
    grad_clip: Searchable(Positive) | None = 1.0
    seed: Seed = 0  # patch sampling; the same for every trial
    sw_batch_size: int = Field(4, ge=1, le=1024)
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    # HD95 per region: true at every validation, k every k epochs (and the last), false off;
    # the post-search scoring and `evaluate` leave it out when false.
    val_hd95: Annotated[StrictInt, Field(ge=1, le=100_000)] | StrictBool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch threads per trial; default: CPUs per trial
    threads: int | None = Field(None, ge=1, le=1024)
    # threads cropping patches ahead of the training step (0: in the training thread);
    # default one per 2 CPUs of the trial, 1 to 4
    sample_workers: int | None = Field(None, ge=0, le=32)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 only on CUDA
    compile: StrictBool = False  # torch.compile the model for the training steps
    # Weight averaging over the last `average_fraction` of the epochs (train_fn.averaging):
    # none, swa (the mean of the epoch-end weights) or ema (per step, decay `ema_decay`).
    average: Literal["none", "swa", "ema"] = "none"
    average_fraction: float = Field(0.25, gt=0, le=1)
    ema_decay: float = Field(0.99, gt=0, lt=1)

    @model_validator(mode="after")
    def _fits(self):
        voxels = self.batch_size * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        if voxels > MAX_STEP_VOXELS:
            raise ValueError(f"train.batch_size x train.patch_size is {voxels:,} voxels per "
                             f"step; at most {MAX_STEP_VOXELS:,} (e.g. 2 x 512^3) fit a device")
        return self


class SearchSpec(_Section):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed = 0
    # pbt: Ray Tune's population-based training, num_trials the population (search.tuner)
    scheduler: Literal["asha", "fifo", "pbt"] = "asha"
    pbt_interval: int = Field(2, ge=1, le=100_000)  # epochs between PBT's exploit steps
    grace_period: int = Field(1, ge=1, le=100_000)
    reduction_factor: int = Field(2, ge=2, le=100)
    num_trials: int = Field(8, ge=1, le=100_000)
    max_concurrent: int = Field(2, ge=1, le=10_000)
    metric: Literal["val_dice"] = "val_dice"
    # retries of a failing trial, from its last checkpoint
    max_failures: int = Field(1, ge=0, le=1000)
    # checked after each epoch
    trial_time_limit_s: float | None = Field(None, gt=0, le=366 * 86400)
    # Fork-then-search (search.trunk): one shared trunk trained for this many epochs at the
    # centre of the searched ranges before the search; every trial starts from its weights.
    trunk_epochs: int = Field(0, ge=0, le=100_000)
    # The run's training budget in epochs, the trunk's and the siblings' included: the search
    # stops its trials once they have trained what is left after those (equal compute across
    # settings). None: search.num_trials and ASHA alone bound it.
    budget_epochs: int | None = Field(None, ge=1, le=10_000_000)


class ResourcesSpec(_Section):
    cpu: float = Field(1.0, gt=0, le=4096)
    gpu: float = Field(0.0, ge=0, le=256)


class SoupSpec(_Section):
    enabled: StrictBool = True
    top_k: int = Field(4, ge=1, le=1000)
    # Sibling soups (search.siblings): K copies of the best trial forked from its own
    # checkpoint at `fork_fraction` of its epochs, each finishing with its own seed; the soups
    # are then made of the best trial and its siblings. 0: the top_k trials, as before.
    siblings: int = Field(0, ge=0, le=1000)
    fork_fraction: float = Field(0.5, gt=0, lt=1)


class CVSpec(_Section):
    """k-fold cross-validation over the train and validation cases (test cases stay held out).
    `best`: search on the train/val split, then retrain the `top_k` best configurations on each
    fold. `every`: each trial trains every fold in turn and is scored by its mean over folds
    (ASHA's rungs then count folds). Soups are made per fold when top_k > 1."""

    folds: int = Field(0, ge=0, le=100)  # 0: no cross-validation
    mode: Literal["best", "every"] = "best"
    top_k: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _check(self):
        if self.folds == 1:
            raise ValueError("cv.folds must be 0 (no cross-validation) or at least 2")
        if self.mode == "every" and not self.folds:
            raise ValueError("cv.mode every needs cv.folds (2 or more)")
        return self

    @property
    def every(self) -> bool:
        return self.mode == "every" and self.folds >= 2


class TrackingSpec(_Section):
    uri: str | None = None  # default: sqlite:///<storage>/mlflow.db
    experiment: str | None = None  # default: the run name
    # the run's figures (<run>/plots/ and the parent MLflow run); false: none (~2 s less a run)
    plots: StrictBool = True


class LRFinderSpec(_Section):
    """An exponential LR range test (MONAI LearningRateFinder) run once before the search when
    `enabled`, or by itself with `python -m search lr-find SPEC`."""

    enabled: StrictBool = False
    start_lr: float = Field(1e-5, gt=0, le=BIG)
    end_lr: float = Field(1.0, gt=0, le=BIG)
    num_iter: int = Field(100, ge=10, le=100_000)
    smooth: float = Field(0.05, ge=0, lt=1)  # exponential smoothing of the loss
    diverge: float = Field(5.0, gt=1, le=BIG)  # stop when the loss passes diverge x the best loss
    # first points left out of the pick (warm-up noise)
    skip_start: int = Field(5, ge=0, le=100_000)
    use: Literal["centre", "set"] = "centre"  # centre the searched lr range on it, or fix lr
    span: float = Field(10.0, gt=1, le=BIG)  # centre: high / low of the lr range

    @model_validator(mode="after")
    def _check(self):
        if self.start_lr >= self.end_lr:
            raise ValueError(f"lr_finder.start_lr ({self.start_lr}) must be below "
                             f"lr_finder.end_lr ({self.end_lr})")
        if self.skip_start > self.num_iter - 5:
            raise ValueError(f"lr_finder.skip_start ({self.skip_start}) leaves fewer than 5 "
                             f"of lr_finder.num_iter ({self.num_iter}) points")
        return self


