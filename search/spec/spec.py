"""The YAML spec: loaded once into a typed, frozen, validated object tree.

Every numeric or boolean hyperparameter can be a fixed value or an Optuna-style search leaf
(`{type: float|int|categorical, low, high, log, step, choices}`). The dotted path of a field
(`optimizer.lr`) is its name everywhere: Optuna parameter, Ray result column, MLflow param.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from search.errors import SpecError
from search.spec.leaves import (
    CategoricalLeaf,
    FloatLeaf,
    IntLeaf,
    SearchLeaf,
    _alternatives,
    _Section,
)
from search.spec.messages import did_you_mean, explain
from search.spec.parse import (
    MAX_SPEC_BYTES,
    _compose,
    _line_map,
    _no_duplicates,
    parse_value,
)
from search.spec.sections import (
    CVSpec,
    DataSpec,
    LayersSpec,
    LRFinderSpec,
    ModelSpec,
    OptimizerSpec,
    ResourcesSpec,
    ScheduleSpec,
    SearchSpec,
    SoupSpec,
    TrackingSpec,
    TrainSpec,
    _names_for,
)
from train_fn.optim import OPTIMIZERS


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
    def _check_trunk(self):
        if self.search.trunk_epochs and self.cv.folds:
            raise ValueError("search.trunk_epochs does not fit cv.folds: the trunk trains on "
                             "the train split, which holds other folds' validation cases; "
                             "remove one of them")
        return self

    @model_validator(mode="after")
    def _check_budget(self):
        s = self.search
        if s.budget_epochs is None:
            return self
        if self.cv.every:
            raise ValueError("search.budget_epochs does not fit cv.mode every (a trial's "
                             "reports are folds there): remove one of them")
        left = self.search_epochs()
        if left is not None and left < 1:
            raise ValueError(
                f"search.budget_epochs ({s.budget_epochs}) leaves no epochs to the trials "
                f"after search.trunk_epochs ({s.trunk_epochs}) and the siblings' epochs "
                f"({s.budget_epochs - s.trunk_epochs - left}): raise it")
        return self

    @model_validator(mode="after")
    def _check_pbt(self):
        s = self.search
        if s.scheduler != "pbt" or not self.search_leaves():
            return self  # a trial's resolved spec has no leaves left
        if s.sampler == "grid":
            raise ValueError("search.scheduler pbt draws its population at random: set "
                             "search.sampler to tpe or random, or search.scheduler to asha")
        if self.cv.every:
            raise ValueError("search.scheduler pbt does not fit cv.mode every (a trial's "
                             "reports are folds there): remove one of them")
        if s.pbt_interval >= self.train.epochs:
            raise ValueError(f"search.pbt_interval ({s.pbt_interval}) must be less than "
                             f"train.epochs ({self.train.epochs}): PBT acts between epochs")
        for path, _, leaf in self.search_leaves():
            if leaf.when:
                raise ValueError(f"{path}: search.scheduler pbt does not take conditional "
                                 "leaves (with `when`): search one setting per run")
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

    def fork_epoch(self) -> int | None:
        """The epoch (1-based) whose state a trial keeps for sibling soups (`soup.siblings`):
        `soup.fork_fraction` of its epochs, at least 1 and before the last; None without
        siblings."""
        epochs = self.train.epochs
        if not self.soup.siblings or self.cv.every or epochs < 2:
            return None
        return min(epochs - 1, max(1, round(self.soup.fork_fraction * epochs)))

    def search_epochs(self) -> int | None:
        """The epochs `search.budget_epochs` leaves to the search's trials: the run's budget
        less the trunk's epochs and the siblings' (each trains from its fork epoch to the
        end); None without a budget."""
        total = self.search.budget_epochs
        if total is None:
            return None
        fork = self.fork_epoch()
        siblings = self.soup.siblings * (self.train.epochs - fork) if fork is not None else 0
        return total - self.search.trunk_epochs - siblings

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
            if isinstance(v, SearchLeaf):
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
        if isinstance(value, BaseModel) and not isinstance(value, SearchLeaf):
            yield from _walk(value, path + ".")
        else:
            yield path, value


def _names(leaves: dict, kind: type) -> str:
    return ", ".join(k for k, v in leaves.items() if isinstance(v, kind)) or "none"


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
        what = ("a folder, not a spec file" if path.is_dir() else
                "not a regular file (a pipe, socket or device); a spec is a YAML file"
                if path.exists() else "no such spec file")
        raise SpecError(f"{path}: {what}")
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
        raise SpecError(explain(err, Spec, path, lines, set_keys)) from None


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
                            f"{did_you_mean(part, list(fields))}")
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


def dump_spec(spec: Spec) -> str:
    """The spec as YAML (what a run saves next to its results)."""
    return yaml.safe_dump(copy.deepcopy(spec.model_dump(exclude_none=True, mode="json",
                                                         warnings=False)),
                          sort_keys=False)

