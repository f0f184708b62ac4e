"""The README's two reference tables, generated from the code so they stay complete and true.

- The spec keys: one row per setting of every section of `search.spec.Spec` (its dotted name,
  default, type and range, whether it can be searched), read from the pydantic classes; the
  last column, what the setting does, is written by hand in the README and kept from it.
- The command line: one table per subcommand of `python -m search`, from the argparse parser
  that `--help` prints.

    python docs/reference.py            # say whether README.md is up to date (exit 1 if not)
    python docs/reference.py --write    # rewrite the two tables in README.md

A new spec key gets a row with an empty last column: describe it there.
`tests/unit/test_readme.py` fails while README.md is not what this script writes.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, Tag

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SPEC_BEGIN, SPEC_END = "<!-- spec keys: begin (docs/reference.py) -->", "<!-- spec keys: end -->"
CLI_BEGIN, CLI_END = "<!-- cli: begin (docs/reference.py) -->", "<!-- cli: end -->"
SPEC_HEADER = "| key | default | value | searchable | what |\n| --- | --- | --- | --- | --- |"


# --- spec keys ------------------------------------------------------------------------------
def _number(value: float) -> str:
    if value == 2**32:
        return "2^32"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _bounds(metadata: list[Any]) -> str:
    """` 1 to 1,000`, ` > 0 to < 1`: a number's range from its pydantic constraints."""
    low = high = ""
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = _number(m.ge)
        elif isinstance(m, annotated_types.Gt):
            low = f"> {_number(m.gt)}"
        elif isinstance(m, annotated_types.Le):
            high = _number(m.le)
        elif isinstance(m, annotated_types.Lt):
            high = f"< {_number(m.lt)}"
    return f" {low} to {high}" if low and high else f" {low or high}".rstrip()


def _flat(annotation: Any) -> tuple[Any, list[Any]]:
    """An annotation without its `Annotated` layers, and their constraints."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        annotation = args[0]
        for extra in args[1:]:
            metadata += getattr(extra, "metadata", []) or [extra]
    return annotation, metadata


def describe(annotation: Any, metadata: list[Any] = ()) -> str:
    """A type as a reader writes it: `int 1..1000`, `a \\| b`, `[int, int, int]`."""
    annotation, more = _flat(annotation)
    metadata = [*metadata, *more]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(describe(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {describe(args[0])}"
        if len(set(args)) == 1:
            return f"{len(args)} x {describe(args[0])}"
        return f"[{', '.join(describe(a) for a in args)}]"
    if origin is dict:
        return f"map {describe(args[0])}: {describe(args[1])}"
    if annotation is bool:
        return "true \\| false"
    if annotation in (int, float):
        return annotation.__name__ + _bounds(metadata)
    if annotation is str:
        return "text"
    return getattr(annotation, "__name__", str(annotation))


def _searchable(annotation: Any) -> tuple[bool, Any]:
    """Whether a field takes a search leaf (`Searchable(kind)`), and its fixed-value type."""
    bare, _ = _flat(annotation)
    options = [a for a in typing.get_args(bare) if a is not type(None)]
    if typing.get_origin(bare) in (typing.Union, types.UnionType) and len(options) == 1:
        return _searchable(options[0])
    for option in options:
        if typing.get_origin(option) is typing.Annotated \
                and Tag("fixed") in typing.get_args(option)[1:]:
            return True, option
    return False, annotation


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_default(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def spec_rows() -> list[tuple[str, str, str, str]]:
    """(dotted key, default, value, searchable) of every setting, in the spec's own order."""
    from search.spec import Spec
    from train_fn.models import MODELS
    from train_fn.optim import OPTIMIZERS

    # Names checked against a registry by a validator, not by their type.
    registries = {"model.name": MODELS, "optimizer.name": OPTIMIZERS}
    rows = []
    for section, field in Spec.model_fields.items():
        cls: type[BaseModel] = field.annotation
        for key, info in cls.model_fields.items():
            searchable, fixed = _searchable(info.annotation)
            value = describe(fixed, list(info.metadata))
            if f"{section}.{key}" in registries:
                value = " \\| ".join(registries[f"{section}.{key}"])
            nullable = type(None) in typing.get_args(info.annotation)
            if nullable and info.default is not None:  # null turns off what the default does
                value += " \\| null"
            rows.append((f"{section}.{key}", _default(info.default), value,
                         "yes" if searchable else ""))
    return rows


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def spec_table(readme: str) -> str:
    """The spec-key table, with each key's description as the README has it ('' if new)."""
    said = {}
    for line in _block(readme, SPEC_BEGIN, SPEC_END).splitlines():
        cells = _cells(line) if line.startswith("| `") else []
        if len(cells) == 5:
            said[cells[0].strip("`")] = cells[4]
    lines = [SPEC_HEADER]
    for key, default, value, searchable in spec_rows():
        lines.append(f"| `{key}` | {default} | {value} | {searchable} | {said.get(key, '')} |")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------
def _markdown(text: str) -> str:
    """Help text as Markdown shows it: `<name>` is no HTML tag, `*.nii` no emphasis."""
    for char, escaped in (("<", "&lt;"), (">", "&gt;"), ("*", "\\*"), ("|", "\\|")):
        text = text.replace(char, escaped)
    return text


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper())
    return f"{names} `{metavar}{' ...' if action.nargs in ('+', '*') else ''}`"


def cli_tables() -> str:
    """One table per subcommand: each argument and option with its `--help` text."""
    from search import cli

    parser = cli._parser()  # the parser that --help prints
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = []
    for name, command in sub.choices.items():
        out += [f"`python -m search {name}`: {_markdown(helps[name])}.", "",
                "| argument | what |", "| --- | --- |"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = _markdown(" ".join((action.help or "").split()))
            required = " (required)" if action.required and action.option_strings else ""
            out.append(f"| {_option(action)} | {text}{required} |")
        out.append("")
    return "\n".join(out).rstrip()


# --- README ---------------------------------------------------------------------------------
def _block(text: str, begin: str, end: str) -> str:
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"README.md: no {begin} ... {end} block")
    return text[start + len(begin):stop].strip("\n")


def _replace(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return f"{text[:start]}\n{body}\n{text[stop:]}"


def rendered(readme: str) -> str:
    """README.md with both generated blocks as this script writes them."""
    readme = _replace(readme, SPEC_BEGIN, SPEC_END, spec_table(readme))
    return _replace(readme, CLI_BEGIN, CLI_END, cli_tables())


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = rendered(text)
    if "--write" in argv:
        README.write_text(new)
        return 0
    if new != text:
        print("README.md: the spec-key or CLI tables are out of date; run "
              "python docs/reference.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's search/, as the tests import it
    sys.exit(main(sys.argv[1:]))
