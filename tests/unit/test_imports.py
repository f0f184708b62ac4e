"""The import graph of search/ and train_fn/: imports of segtune's own modules sit at the top
of each module (heavy ones named with search.lazy.LazyModule), and they form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(path: Path) -> str:
    """`search/spec/leaves.py` -> `search.spec.leaves`; a package's `__init__` is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for package in ("search", "train_fn")
           for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(node: ast.AST) -> set[str]:
    """The segtune modules an import statement names (`from search import x` names
    `search.x`)."""
    names: list[str] = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    return {name for name in names if name in MODULES}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        body = ast.parse(path.read_text()).body
        graph[module] = set().union(*(_imported(node) for node in body
                                      if not _is_type_checking(node)))
    return graph


def test_every_module_is_read():
    assert len(MODULES) > 30 and "search.cli" in MODULES and "train_fn.loop" in MODULES
    assert "search.cli" in _graph()["search.__main__"]


def test_segtune_modules_are_imported_at_the_top_only():
    local = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        allowed = {id(node) for node in tree.body}
        allowed |= {id(inner) for node in tree.body if _is_type_checking(node)
                    for inner in ast.walk(node)}
        local += [f"{module}:{node.lineno} imports {', '.join(sorted(_imported(node)))}"
                  for node in ast.walk(tree) if _imported(node) and id(node) not in allowed]
    assert local == []


def test_there_is_no_import_cycle():
    graph, done, cycles = _graph(), set(), []

    def visit(module: str, stack: list[str]) -> None:
        stack.append(module)
        for dep in sorted(graph[module]):
            if dep in stack:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, stack)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [])
    assert cycles == []
