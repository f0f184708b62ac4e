"""The spec package and its public surface: a YAML spec loaded once into a typed, frozen tree.

`load_spec` reads a spec file (with `--set key=value` overrides) into a `Spec`, the one object
every other module takes; `dump_spec` writes it back. A setting is a fixed value or a search
leaf (`FloatLeaf`, `IntLeaf`, `CategoricalLeaf`, all `SearchLeaf`s), named everywhere by its
dotted path. Every other module imports from `search.spec` only; inside the package:

- `spec.py`: the root `Spec`, its cross-section rules, loading, overrides, dumping
- `sections.py`: each section's settings, their types, defaults and ranges
- `leaves.py`: the value types (finite numbers, no booleans for numbers) and the search leaves
- `parse.py`: reading the YAML (YAML 1.2 scalars, limits, line numbers, duplicate keys)
- `messages.py`: a validation error as one line, with a did-you-mean
"""

from __future__ import annotations

from search.errors import SpecError
from search.spec.leaves import CategoricalLeaf, FloatLeaf, IntLeaf, Searchable, SearchLeaf
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
)
from search.spec.spec import Spec, dump_spec, load_spec, with_lr

__all__ = [
    "CVSpec",
    "CategoricalLeaf",
    "DataSpec",
    "FloatLeaf",
    "IntLeaf",
    "LRFinderSpec",
    "LayersSpec",
    "ModelSpec",
    "OptimizerSpec",
    "ResourcesSpec",
    "ScheduleSpec",
    "SearchLeaf",
    "SearchSpec",
    "Searchable",
    "SoupSpec",
    "Spec",
    "SpecError",
    "TrackingSpec",
    "TrainSpec",
    "dump_spec",
    "load_spec",
    "with_lr",
]
