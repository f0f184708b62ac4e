"""The YAML spec: loaded once into a typed, frozen, validated object tree.

Every numeric or boolean hyperparameter can be a fixed value or an Optuna-style search leaf
(`{type: float|int|categorical, low, high, log, step, choices}`). The dotted path of a field
(`optimizer.lr`) is its name everywhere: Optuna parameter, Ray result column, MLflow param.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search.errors import SegtuneError
from train_fn.models import MODELS
from train_fn.optim import BANDS, MODES, OPTIMIZERS


class SpecError(SegtuneError, ValueError):
    """Bad user input in a spec or an override; the message is one line, ready to print."""


# ---------------------------------------------------------------------------------------------
# YAML: YAML 1.2 booleans and floats (PyYAML reads `1e-4` as a string and `no` as False).
class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    ch: [r for r in rs if r[0] != "tag:yaml.org,2002:bool"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MAX_SPEC_BYTES = 2**20
# A spec nests a few levels (section, setting, search leaf, `when`); deeper is a mistake, and
# far deeper would exhaust Python's recursion in the YAML composer and the validators.
MAX_DEPTH = 32


def parse_value(text: str, where: str = "value") -> Any:
    """Parse one scalar or flow value the way the spec loader would (used by `--set`)."""
    return _compose(text, where, lines=False)[1]


def _compose(text: str, where: str, lines: bool = True) -> tuple[yaml.Node | None, Any]:
    """(node tree, value) of one YAML document (errors name `where`, with the line when
    `lines`). YAML syntax errors propagate as yaml.YAMLError."""
    _check_events(text, where, lines)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _check_events(text: str, where: str, lines: bool) -> None:
    """Refuse, from the parser's event stream (flat, before anything recurses), nesting beyond
    MAX_DEPTH and aliases of mappings or lists: nested ones expand exponentially (a "billion
    laughs"), in the line map and in validation alike."""
    collections: set[str] = set()
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = f"{where}:{event.start_mark.line + 1}" if lines else where
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(f"{line}: YAML nested too deeply; a spec nests at most "
                                f"{MAX_DEPTH} levels")
            if event.anchor is not None:
                collections.add(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent) and event.anchor in collections:
            raise SpecError(f"{line}: *{event.anchor} is an alias of a mapping or a list; a "
                            "spec takes aliases of single values only (write the mapping or "
                            "list out)")


# ---------------------------------------------------------------------------------------------
# Numbers: every float is finite (`allow_inf_nan` below) and a boolean is never a number
# (`_no_bool`); the ranges are the settings' own.
Scalar = StrictBool | int | float | str
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # of 1: a share, a beta, a momentum
Size = Annotated[int, Field(ge=1)]  # a count or a length in voxels
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what numpy, torch and Optuna all take


def _mentions(annotation: Any, kinds: tuple[type, ...]) -> bool:
    return annotation in kinds or any(_mentions(a, kinds) for a in typing.get_args(annotation))


def _is_bool_for(kind: Any, value: Any) -> bool:
    """Whether `value` is (or lists) a boolean given for a number of a `kind` setting."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return (any(isinstance(v, bool) for v in items) and _mentions(kind, (int, float))
            and not _mentions(kind, (bool,)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Section(_Strict):
    """A spec section: its settings refuse a boolean where a number belongs."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse `true`/`false` where a number belongs (pydantic would read true as 1)."""
        if _is_bool_for(cls.model_fields[info.field_name].annotation, value):
            raise ValueError(f"expected a number, got {_bool_text(value)} (a boolean)")
        return value


def _bool_text(value: Any) -> str:
    items = value if isinstance(value, (list, tuple)) else [value]
    return str(next(v for v in items if isinstance(v, bool))).lower()


# ---------------------------------------------------------------------------------------------
# Search leaves, validated by Optuna's own distribution constructors.
class _Leaf(_Strict):
    when: dict[str, Scalar | list[Scalar]] | None = None
    default: Scalar | None = None

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether a conditional leaf is sampled, given the values chosen so far."""
        for key, allowed in (self.when or {}).items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if key not in chosen or chosen[key] not in allowed:
                return False
        return True

    @field_validator("default", "choices", mode="before", check_fields=False)
    @classmethod
    def _finite(cls, value: Any) -> Any:
        # Said here: the Scalar union would report its first member, "a valid boolean".
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"Input should be a finite number, got {v!r}")
        return value

    @model_validator(mode="after")
    def _check(self):
        self.distribution()  # Optuna checks low <= high, log > 0, step
        return self

    def points(self) -> list[tuple[str, Any]]:
        """(key, value) of every value the leaf can take or name: bounds or choices, default."""
        if isinstance(self, CategoricalLeaf):
            out = [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        else:
            out = [("low", self.low), ("high", self.high)]
        return out + ([("default", self.default)] if self.default is not None else [])


class FloatLeaf(_Leaf):
    type: Literal["float"]
    low: StrictFloat  # strict: a boolean is not a bound
    high: StrictFloat
    log: StrictBool = False
    step: StrictFloat | None = None

    def distribution(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_points(self) -> list[float] | None:
        """Every value from `low` to `high` in `step`s, or None without a `step`."""
        if self.step is None:
            return None
        n = int((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]


class IntLeaf(_Leaf):
    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    log: StrictBool = False
    step: StrictInt = 1

    def distribution(self):
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_points(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalLeaf(_Leaf):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    def distribution(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def grid_points(self) -> list[Scalar]:
        return list(self.choices)


Leaf = Annotated[FloatLeaf | IntLeaf | CategoricalLeaf, Field(discriminator="type")]
_TAGS = {"fixed", "leaf", "alternatives", "float", "int", "categorical"}


def _which(value: Any) -> str:
    if isinstance(value, (dict, _Leaf)):
        return "leaf"
    if isinstance(value, list) and value and all(isinstance(v, (dict, _Leaf)) for v in value):
        return "alternatives"
    return "fixed"


def Searchable(kind: Any) -> Any:  # noqa: N802 - reads as a type
    """A field that is a fixed `kind` value, a search leaf, or a list of conditional leaves
    (alternatives: each with its own `when`, e.g. one lr range per optimizer family). A leaf's
    bounds, choices and default must be valid `kind` values too (its range included)."""
    fixed: list[TypeAdapter] = []  # built on first use: import stays cheap

    def within(value: Any) -> Any:
        for leaf in _alternatives(value):
            if not fixed:
                fixed.append(TypeAdapter(kind))
            for where, point in leaf.points():
                if _is_bool_for(kind, point):
                    raise ValueError(f"{where}: expected a number, got {_bool_text(point)} "
                                     "(a boolean)")
                try:
                    fixed[0].validate_python(point)
                except ValidationError as err:
                    raise ValueError(f"{where}: {err.errors()[0]['msg']}, got {point!r}") \
                        from None
        return value

    return Annotated[
        Annotated[kind, Tag("fixed")] | Annotated[Leaf, Tag("leaf")]
        | Annotated[list[Leaf], Tag("alternatives")],
        Discriminator(_which), AfterValidator(within),
    ]


def _alternatives(value: Any) -> list:
    """The leaves of a searched value (one, or several alternatives)."""
    if isinstance(value, _Leaf):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, _Leaf) for v in value):
        return value
    return []


# ---------------------------------------------------------------------------------------------
# Sections.
class DataSpec(_Section):
    """Where the cases are, how they are preprocessed, and how they are split (see
    train_fn.datasets for the formats)."""

    source: Literal["phantom", "brats_phantom", "segthor", "msd", "folder"] = "phantom"
    root: str | None = None  # the dataset folder; phantoms: their cache folder
    cases: int = Field(12, ge=4)  # phantoms only
    image_pattern: str | None = None  # folder: e.g. images/{case}.nii.gz (relative to root)
    label_pattern: str | None = None  # folder: e.g. labels/{case}.nii.gz
    labels: dict[int, str] | None = None  # foreground label id -> name; default: the format's
    regions: dict[str, tuple[int, ...]] | None = None  # scored name -> label ids; default: each
    orientation: str | None = None  # e.g. RAS; default: as stored
    spacing: tuple[Positive, Positive, Positive] | None = None  # resample to this (mm)
    intensity: Literal["window", "zscore"] | None = None  # default: window (CT), zscore (MR)
    window: tuple[float, float] = (-1000.0, 1000.0)  # HU, mapped to [0, 1]
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
    num_res_units: int | None = Field(None, ge=0)  # unet
    kernel_size: int | None = Field(None, ge=1)  # dynunet, mednext
    res_block: StrictBool | None = None  # dynunet
    norm: Literal["instance", "batch"] | None = None  # dynunet
    deep_supervision: StrictBool | None = None  # dynunet, mednext
    deep_supr_num: int | None = Field(None, ge=1)  # dynunet
    init_filters: int | None = Field(None, ge=1)  # segresnet, mednext
    blocks_down: tuple[int, ...] | None = None  # segresnet, mednext
    blocks_up: tuple[int, ...] | None = None  # segresnet, mednext
    blocks_bottleneck: int | None = Field(None, ge=1)  # mednext
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
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(20, ge=1)
    batch_size: int = Field(2, ge=2)  # patches per step; batch 1 falls onto a slow conv3d path
    patch_size: tuple[Size, Size, Size] = (48, 48, 32)
    grad_clip: Searchable(Positive) | None = 1.0
    seed: Seed = 0  # patch sampling; the same for every trial
    sw_batch_size: int = Field(4, ge=1)
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    # HD95 per region: true at every validation, k every k epochs (and the last), false off;
    # the post-search scoring and `evaluate` leave it out when false.
    val_hd95: StrictBool | Annotated[StrictInt, Field(ge=1)] = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch threads per trial; default: CPUs per trial
    # threads cropping patches ahead of the training step (0: in the training thread);
    # default one per 4 CPUs of the trial, 1 to 4
    sample_workers: int | None = Field(None, ge=0, le=32)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 only on CUDA
    compile: StrictBool = False  # torch.compile the model for the training steps


class SearchSpec(_Section):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed = 0
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    num_trials: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: Literal["val_dice"] = "val_dice"
    max_failures: int = Field(1, ge=0)  # retries of a failing trial, from its last checkpoint
    trial_time_limit_s: float | None = Field(None, gt=0)  # checked after each epoch


class ResourcesSpec(_Section):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SoupSpec(_Section):
    enabled: StrictBool = True
    top_k: int = Field(4, ge=1)


class CVSpec(_Section):
    """k-fold cross-validation over the train and validation cases (test cases stay held out).
    `best`: search on the train/val split, then retrain the `top_k` best configurations on each
    fold. `every`: each trial trains every fold in turn and is scored by its mean over folds
    (ASHA's rungs then count folds). Soups are made per fold when top_k > 1."""

    folds: int = Field(0, ge=0)  # 0: no cross-validation
    mode: Literal["best", "every"] = "best"
    top_k: int = Field(1, ge=1)

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


class LRFinderSpec(_Section):
    """An exponential LR range test (MONAI LearningRateFinder) run once before the search when
    `enabled`, or by itself with `python -m search lr-find SPEC`."""

    enabled: StrictBool = False
    start_lr: float = Field(1e-5, gt=0)
    end_lr: float = Field(1.0, gt=0)
    num_iter: int = Field(100, ge=10)
    smooth: float = Field(0.05, ge=0, lt=1)  # exponential smoothing of the loss
    diverge: float = Field(5.0, gt=1)  # stop when the loss passes diverge x the best loss
    skip_start: int = Field(5, ge=0)  # first points left out of the pick (warm-up noise)
    use: Literal["centre", "set"] = "centre"  # centre the searched lr range on it, or fix lr
    span: float = Field(10.0, gt=1)  # centre: high / low of the lr range

    @model_validator(mode="after")
    def _check(self):
        if self.start_lr >= self.end_lr:
            raise ValueError(f"lr_finder.start_lr ({self.start_lr}) must be below "
                             f"lr_finder.end_lr ({self.end_lr})")
        if self.skip_start > self.num_iter - 5:
            raise ValueError(f"lr_finder.skip_start ({self.skip_start}) leaves fewer than 5 "
                             f"of lr_finder.num_iter ({self.num_iter}) points")
        return self


class Spec(_Section):
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    layers: LayersSpec = LayersSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    soup: SoupSpec = SoupSpec()
    cv: CVSpec = CVSpec()
    tracking: TrackingSpec = TrackingSpec()
    lr_finder: LRFinderSpec = LRFinderSpec()

    @model_validator(mode="after")
    def _check_schedule(self):
        names = self.optimizer.names()
        for key in ("cycles", "warmup_multiplier"):
            value = getattr(self.schedule, key)
            if value is None:
                continue
            for name in _names_for(value, names):
                if OPTIMIZERS[name].schedule_free:
                    raise ValueError(
                        f"schedule.{key} does not fit optimizer.name {name!r}: a schedule-free "
                        "optimizer keeps its LR constant after its own warmup (remove "
                        f"schedule.{key}"
                        + (", or make it conditional on the other optimizers)"
                           if len(names) > 1 else ")")
                    )
        for name in _names_for(self.schedule.warmup_fraction, names):
            if not OPTIMIZERS[name].warmup and self.schedule.warmup_fraction != 0:
                raise ValueError(
                    f"schedule.warmup_fraction does not fit optimizer.name {name!r}, which has "
                    "no warmup (RAdam's rectification replaces it): set "
                    "schedule.warmup_fraction to 0"
                )
        if self.lr_finder.enabled and len(names) > 1:
            raise ValueError("lr_finder needs a fixed optimizer.name (each optimizer family "
                             "has its own LR range: run lr-find for each)")
        return self

    @model_validator(mode="after")
    def _check_grid(self):
        if self.search.sampler != "grid" or not self.search_leaves():
            return self  # a trial's resolved spec has no leaves left
        size = math.prod(len(points) for points in self.grid().values())
        if self.search.num_trials > size:
            raise ValueError(f"search.num_trials ({self.search.num_trials}) is larger than the "
                             f"grid ({size} points): set search.num_trials to {size} or less")
        return self

    def grid(self) -> dict[str, list[Any]]:
        """The values of every search leaf for `search.sampler: grid`, by Optuna name. A grid
        needs categorical leaves, int leaves, or float leaves with a `step`, none conditional."""
        values = {}
        for path, name, leaf in self.search_leaves():
            if leaf.when:
                raise ValueError(f"{path}: search.sampler grid does not take conditional "
                                 "leaves (with `when`): list the combinations as choices")
            points = leaf.grid_points()
            if points is None:
                raise ValueError(f"{path}: search.sampler grid needs a categorical leaf, an "
                                 "int leaf or a float leaf with `step`; got a float range "
                                 f"[{leaf.low}, {leaf.high}] without step")
            values[name] = points
        return values

    @model_validator(mode="after")
    def _check_conditions(self):
        leaves = self.searched()
        for path, value in leaves.items():
            if not _covered(_alternatives(value), leaves) and not _optional(path):
                raise ValueError(f"{path}: a conditional leaf (with `when`) needs a `default` "
                                 "for when it is off")
        for path, _, leaf in self.search_leaves():
            for key, allowed in (leaf.when or {}).items():
                ref = leaves.get(key)
                if not isinstance(ref, CategoricalLeaf):
                    raise ValueError(
                        f"{path}.when refers to {key!r}, which is not a searched categorical; "
                        f"searched categoricals: {_names(leaves, CategoricalLeaf)}"
                    )
                for value in allowed if isinstance(allowed, list) else [allowed]:
                    if value not in ref.choices:
                        raise ValueError(
                            f"{path}.when: {value!r} is not a choice of {key}; "
                            f"choices: {ref.choices}"
                        )
        return self

    def searched(self) -> dict[str, Any]:
        """Searched settings by dotted path, in spec order: a leaf, or a list of alternative
        leaves."""
        return {k: v for k, v in _walk(self) if _alternatives(v)}

    def search_leaves(self) -> list[tuple[str, str, FloatLeaf | IntLeaf | CategoricalLeaf]]:
        """(dotted path, Optuna parameter name, leaf) of every leaf. The Optuna name is the
        path, or for one of several alternatives the path with its condition
        (`optimizer.lr@adamw`), so each alternative keeps its own history in the sampler."""
        out = []
        for path, value in self.searched().items():
            leaves = _alternatives(value)
            for leaf in leaves:
                name = path
                if len(leaves) > 1:
                    name += "@" + ",".join(
                        "|".join(map(str, v)) if isinstance(v, list) else str(v)
                        for v in (leaf.when or {}).values())
                out.append((path, name, leaf))
        return out

    def flat(self) -> dict[str, Any]:
        """Every setting by dotted path (leaves as their dict form)."""
        def plain(v):
            if isinstance(v, _Leaf):
                return v.model_dump(exclude_none=True)
            return [plain(x) for x in v] if _alternatives(v) else v

        return {k: plain(v) for k, v in _walk(self)}

    def resolve(self, params: dict[str, Any]) -> Spec:
        """The concrete spec of one trial: each leaf replaced by its chosen value, or by its
        `default` where a condition switched it off."""
        tree = self.model_dump(warnings=False)
        for path, value in self.searched().items():
            leaves = _alternatives(value)
            if path in params:
                chosen = params[path]
            elif all(leaf.when for leaf in leaves):
                chosen = next((leaf.default for leaf in leaves if leaf.default is not None), None)
            else:
                raise SpecError(f"{path}: no value chosen for this searched parameter")
            _set(tree, path, chosen)
        return Spec.model_validate(tree)


def with_lr(spec: Spec, suggestion: float) -> Spec:
    """The spec with its learning rate taken from an LR range test: fixed at the suggestion
    (`lr_finder.use: set`) or searched log-uniformly on a range of `lr_finder.span` centred on
    it (`centre`)."""
    tree = spec.model_dump(warnings=False)
    if spec.lr_finder.use == "set":
        tree["optimizer"]["lr"] = suggestion
    else:
        half = spec.lr_finder.span ** 0.5
        tree["optimizer"]["lr"] = {"type": "float", "low": suggestion / half,
                                   "high": suggestion * half, "log": True}
    return Spec.model_validate(tree)


def _covered(alts: list, leaves: dict[str, Any]) -> bool:
    """Whether a setting always gets a value: a leaf without condition, a default, or
    alternatives whose conditions on one categorical cover all of its choices."""
    if any(not leaf.when or leaf.default is not None for leaf in alts):
        return True
    keys = {k for leaf in alts for k in leaf.when}
    if len(keys) != 1 or any(len(leaf.when) != 1 for leaf in alts):
        return False
    ref = leaves.get(keys.pop())
    allowed = set()
    for leaf in alts:
        value = next(iter(leaf.when.values()))
        allowed |= set(value if isinstance(value, list) else [value])
    return isinstance(ref, CategoricalLeaf) and set(ref.choices) <= allowed


def _optional(path: str) -> bool:
    """Whether the setting at `path` may be unset (None)."""
    import types
    import typing

    model: Any = Spec
    *parents, last = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    annotation = model.model_fields[last].annotation
    return type(None) in typing.get_args(annotation) or annotation is types.NoneType


def _walk(model: BaseModel, prefix: str = ""):
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel) and not isinstance(value, _Leaf):
            yield from _walk(value, path + ".")
        else:
            yield path, value


def _names(leaves: dict, kind: type) -> str:
    return ", ".join(k for k, v in leaves.items() if isinstance(v, kind)) or "none"


def _known_name(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        hint = difflib.get_close_matches(value, list(registry), n=1)
        guess = f"did you mean {hint[0]!r}? " if hint else ""
        raise ValueError(f"unknown {what} {value!r}; {guess}valid: {', '.join(registry)}")
    return value


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages.
def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    """Load and validate a spec file, then apply `key=value` overrides through the same checks."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {size} bytes; a spec file is at most 1 MiB "
                            f"({MAX_SPEC_BYTES} bytes)")
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec file ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                        f"{err.start}); a spec is a UTF-8 YAML file") from None
    try:
        node, raw = _compose(text, str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None or raw == {}:
        raise SpecError(f"{path}: empty spec; a spec is a mapping of sections (data, model, "
                        "optimizer, ...): an empty one would run every default")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of sections (data, model, ...), "
                        f"got {type(raw).__name__}")
    lines = _line_map(node)
    _no_duplicates(node, path)
    set_keys = set()
    for item in overrides:
        key, value = _parse_override(item)
        _check_override_key(key)
        _set_override(raw, key, value)
        set_keys.add(key)
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_explain(err, path, lines, set_keys)) from None


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected dotted.key=value, e.g. optimizer.lr=0.002")
    try:
        return key.strip(), parse_value(text, f"--set {key.strip()}")
    except yaml.YAMLError:
        raise SpecError(f"--set {item!r}: cannot parse the value {text!r}") from None


def _check_override_key(key: str) -> None:
    model: type[BaseModel] = Spec
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the spec"
            raise SpecError(f"--set {key}: unknown key {part!r} in {where}; "
                            f"{_did_you_mean(part, list(fields))}")
        sub = fields[part].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and i < len(parts) - 1:
            model = sub
        elif i < len(parts) - 1:
            setting = ".".join(parts[:i + 1])
            if not _has_keys(sub):
                raise SpecError(f"--set {key}: {setting} is a single value, not a section; "
                                f"set it with --set {setting}=VALUE")
            return  # into a search leaf: the leaf's own validation names what is wrong


def _has_keys(annotation: Any) -> bool:
    """Whether a setting's value can be a mapping (a search leaf, or a dict such as labels)."""
    if typing.get_origin(annotation) is dict or (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return True
    return any(_has_keys(a) for a in typing.get_args(annotation))


def _set_override(tree: dict, key: str, value: Any) -> None:
    """`_set` for `--set`, which may go into a search leaf only where the spec has one."""
    *parents, last = key.split(".")
    for i, part in enumerate(parents):
        if tree.get(part) is None:  # unset, or an empty section (`train:` alone)
            tree[part] = {}
        tree = tree[part]
        if not isinstance(tree, dict):
            setting = ".".join(parents[:i + 1])
            raise SpecError(f"--set {key}: {setting} is {tree!r} in the spec, not a search "
                            f"leaf; give the whole leaf, e.g. --set '{setting}={{type: float, "
                            "low: ..., high: ...}'")
    tree[last] = value


def _did_you_mean(word: str, valid: list[str]) -> str:
    hint = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return (f"did you mean {hint[0]!r}? " if hint else "") + f"valid: {', '.join(valid)}"


def _explain(err: ValidationError, path: Path, lines: dict[str, int], set_keys: set[str]) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if p not in _TAGS and not isinstance(p, int)]
    index = [p for p in first["loc"] if isinstance(p, int)]
    key = ".".join(loc)
    origin = next((f"--set {k}" for k in set_keys if key == k or key.startswith(k + ".")), None)
    if origin is None:
        probe = key
        while probe and probe not in lines:
            probe = probe.rpartition(".")[0]
        origin = f"{path}:{lines[probe]}" if probe else str(path)
    if first["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = list(parent.model_fields) if parent else []
        return f"{origin}: {key}: unknown key; {_did_you_mean(loc[-1], valid)}"
    msg = first["msg"].removeprefix("Value error, ")
    if not key and first["type"] == "value_error":
        # A rule across sections: name the file line of the first setting it mentions.
        named = msg.split(" ", 1)[0].rstrip(":")
        probe = named
        while probe and probe not in lines:
            probe = probe.rpartition(".")[0]
        if probe and not set_keys:
            origin = f"{path}:{lines[probe]}"
        return f"{origin}: {msg}"
    where = key + (f"[{index[-1]}]" if index and first["type"] != "value_error" else "")
    got = first.get("input")
    got_text = "" if isinstance(got, dict) or first["type"] == "value_error" else f", got {got!r}"
    if first["type"] == "bool_type":
        msg += " (write true or false)"
    return f"{origin}: {where or 'spec'}: {msg}{got_text}"


def _model_at(parts: list[str]) -> type[BaseModel] | None:
    model: Any = Spec
    for part in parts:
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = field.annotation if isinstance(field.annotation, type) else None
        if model is not None and not issubclass(model, BaseModel):
            return None
    if model is None and parts:  # a search leaf: every leaf key is valid somewhere
        return type("LeafKeys", (), {"model_fields": {**FloatLeaf.model_fields,
                                                       **CategoricalLeaf.model_fields}})
    return model


def _line_map(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    out = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            out.update(_line_map(value_node, key + "."))
    return out


def _no_duplicates(node: yaml.Node, path: Path, prefix: str = "") -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            if key in seen:
                raise SpecError(f"{path}:{key_node.start_mark.line + 1}: {key}: duplicate key")
            seen.add(key)
            _no_duplicates(value_node, path, key + ".")


def dump_spec(spec: Spec) -> str:
    """The spec as YAML (what a run saves next to its results)."""
    return yaml.safe_dump(copy.deepcopy(spec.model_dump(exclude_none=True, mode="json",
                                                         warnings=False)),
                          sort_keys=False)


__all__ = ["BANDS", "Spec", "SpecError", "dump_spec", "load_spec", "parse_value"]
