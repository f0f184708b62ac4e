"""Spec errors as one line: where (file:line or `--set`), the dotted key, what is wrong, and
a did-you-mean for an unknown name (search.spec raises them)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from search.spec.leaves import _TAGS, CategoricalLeaf, FloatLeaf


def did_you_mean(word: str, valid: list[str]) -> str:
    """`did you mean 'x'? valid: ...` for an unknown name."""
    hint = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return (f"did you mean {hint[0]!r}? " if hint else "") + f"valid: {', '.join(valid)}"


def explain(err: ValidationError, root: type[BaseModel], path: Path, lines: dict[str, int],
            set_keys: set[str]) -> str:
    """The first validation error of a spec as one line: the file:line of the setting (or
    the `--set` that gave it), the dotted key, what is wrong and the value given."""
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
        parent = _model_at(root, loc[:-1])
        valid = list(parent.model_fields) if parent else []
        return f"{origin}: {key}: unknown key; {did_you_mean(loc[-1], valid)}"
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


def _model_at(root: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    """The section model at a dotted path below `root`, for its valid keys."""
    model: Any = root
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
