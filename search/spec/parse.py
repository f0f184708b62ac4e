"""Reading a spec's YAML: YAML 1.2 booleans and floats, one document, nesting and alias
limits checked on the event stream before anything recurses, a line number for every dotted
key, duplicate keys refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from search.errors import SpecError


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
# Python refuses to read an integer of over 4300 digits (a ValueError deep in PyYAML); no
# setting needs more than a few dozen characters.
MAX_NUMBER_CHARS = 64
_NUMBER = re.compile(r"[-+]?[0-9_.]+(?:[eE][-+]?[0-9]+)?|[-+]?0[xob][0-9a-fA-F_]+")


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
        elif (isinstance(event, yaml.ScalarEvent) and event.style is None
              and len(event.value) > MAX_NUMBER_CHARS and _NUMBER.fullmatch(event.value)):
            raise SpecError(f"{line}: a number of {len(event.value)} characters; a spec's "
                            f"numbers have at most {MAX_NUMBER_CHARS}")
        elif isinstance(event, yaml.AliasEvent) and event.anchor in collections:
            raise SpecError(f"{line}: *{event.anchor} is an alias of a mapping or a list; a "
                            "spec takes aliases of single values only (write the mapping or "
                            "list out)")




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


