"""The value types of spec settings: finite numbers, no booleans for numbers, and the search
leaves (`{type: float|int|categorical, ...}`) that make a setting searched."""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
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

# ---------------------------------------------------------------------------------------------
# Numbers: every float is finite (`allow_inf_nan` below) and a boolean is never a number
# (`_no_bool`); the ranges are the settings' own.
Scalar = StrictBool | int | float | str
# Upper bounds keep a typo (1e12, an extra digit run) from reaching Ray or the allocator: far
# beyond any sensible value, within what a machine can hold.
BIG = 10**6
Positive = Annotated[float, Field(gt=0, le=BIG)]
NonNegative = Annotated[float, Field(ge=0, le=BIG)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # of 1: a share, a beta, a momentum
Size = Annotated[int, Field(ge=1, le=4096)]  # a count or a length in voxels
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
class SearchLeaf(_Strict):
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


class FloatLeaf(SearchLeaf):
    type: Literal["float"]
    low: StrictFloat  # strict: a boolean is not a bound
    high: StrictFloat
    log: StrictBool = False
    step: StrictFloat | None = None

    def distribution(self):
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_points(self) -> list[float] | None:
        """Every value from `low` to `high` in `step`s, or None without a `step`."""
        if self.step is None:
            return None
        n = int((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]


class IntLeaf(SearchLeaf):
    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    log: StrictBool = False
    step: StrictInt = 1

    def distribution(self):
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_points(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalLeaf(SearchLeaf):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    def distribution(self):
        return CategoricalDistribution(self.choices)

    def grid_points(self) -> list[Scalar]:
        return list(self.choices)


Leaf = Annotated[FloatLeaf | IntLeaf | CategoricalLeaf, Field(discriminator="type")]
_TAGS = {"fixed", "leaf", "alternatives", "float", "int", "categorical"}


def _which(value: Any) -> str:
    if isinstance(value, (dict, SearchLeaf)):
        return "leaf"
    if isinstance(value, list) and value and all(isinstance(v, (dict, SearchLeaf)) for v in value):
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
    if isinstance(value, SearchLeaf):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, SearchLeaf) for v in value):
        return value
    return []


