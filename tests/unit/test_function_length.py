"""No function in the product code is longer than a screen (issue 26): a reader sees each one
whole. The phantom generators (one synthetic anatomy, organ by organ) and the CLI's argparse
declaration (one option a line) are the exceptions. And a function that returns a tuple says
what is in it (`-> tuple[...]`, or a named alias of one)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import product_modules

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60
EXEMPT = {("train_fn/phantom.py", "make_case"), ("train_fn/phantom_msd.py", "make_case"),
          ("search/cli.py", "_parser")}


def _functions(root: Path):
    for rel, tree in product_modules(root):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield rel, node


def untyped_tuples(root: Path = ROOT) -> list[str]:
    """`path:line name` of every function that returns a tuple display without a return
    annotation (a nested function's returns are its own)."""
    return [f"{rel}:{node.lineno} {node.name}" for rel, node in _functions(root)
            if node.returns is None and any(isinstance(r.value, ast.Tuple)
                                            for r in _own_returns(node))]


def _own_returns(function: ast.AST) -> list[ast.Return]:
    """The return statements of `function` itself, not of the functions nested in it."""
    out, todo = [], list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Return):
            out.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return out


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    """`path:line name (n lines)` of every function in search/ and train_fn/ over `limit`
    lines (decorators and docstring included), the exempt ones aside."""
    found = []
    for rel, node in _functions(root):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        lines = node.end_lineno - first + 1
        if lines > limit and (rel, node.name) not in EXEMPT:
            found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_a_screen():
    assert long_functions() == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "long.py").write_text(f"def short():\n    pass\n\n\ndef f():\n{body}\n")
    assert long_functions(tmp_path) == [f"search/long.py:5 f ({LIMIT + 1} lines)"]


def test_every_returned_tuple_is_typed():
    assert untyped_tuples() == []


def test_the_check_finds_an_untyped_tuple(tmp_path):
    (tmp_path / "train_fn").mkdir()  # only one of the two packages: the other is skipped
    (tmp_path / "train_fn" / "pair.py").write_text(
        "def typed() -> tuple[int, int]:\n    return 1, 2\n\n\n"
        "def outer():\n    def inner() -> tuple[int, int]:\n        return 1, 2\n"
        "    return inner\n\n\n"
        "def untyped(x):\n    if x:\n        return 1, 2\n    return None\n")
    assert untyped_tuples(tmp_path) == ["train_fn/pair.py:11 untyped"]
