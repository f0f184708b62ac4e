"""The import graph of search/ and train_fn/: imports of segtune's own modules sit at the top
of each module (heavy ones named with search.lazy.LazyModule), they form no cycle, a function
imports only a library that takes seconds to load, `train_fn` never imports `search`, and the
Ray workers' `search.trainable` reaches no driver module."""

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


def _run_time_nodes(path: Path, local: bool) -> list[ast.AST]:
    """The statements of a module outside `if TYPE_CHECKING:` blocks: its top-level ones, and
    with `local` every statement inside them too (what runs when a function is called)."""
    body = [node for node in ast.parse(path.read_text()).body if not _is_type_checking(node)]
    return [inner for node in body for inner in ast.walk(node)] if local else body


def _graph(local: bool = False) -> dict[str, set[str]]:
    """Module -> the segtune modules it imports (at its top, or with `local` anywhere)."""
    return {module: set().union(*(_imported(node) for node in _run_time_nodes(path, local)))
            for module, path in MODULES.items()}


# Libraries a function may import itself, so that importing its module stays fast (the CLI's
# `--help`, a spec error, `import search.api`: search/lazy.py).
SLOW = ("torch", "monai", "nibabel", "scipy", "matplotlib", "mlflow", "schedulefree",
        "optuna.visualization")


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


def test_functions_import_only_slow_libraries():
    local = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = {id(inner) for node in tree.body  # top-level `if TYPE_CHECKING:` and `try:` too
               for inner in (ast.walk(node) if _is_type_checking(node) or isinstance(node, ast.Try)
                             else [node])}
        for node in ast.walk(tree):
            if id(node) in top or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = ([node.module] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names])
            local += [f"{module}:{node.lineno} imports {name}" for name in names
                      if not any(name == s or name.startswith(s + ".") for s in SLOW)]
    assert local == []


def test_train_fn_never_imports_search():
    graph = _graph(local=True)
    found = {m: sorted(d for d in deps if d.split(".")[0] == "search")
             for m, deps in graph.items() if m.startswith("train_fn")}
    assert {m: d for m, d in found.items() if d} == {}


def _reached(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(graph[module])
    return seen


def test_the_workers_trainable_reaches_no_driver_module():
    reached = _reached("search.trainable", _graph(local=True))
    worker_side = {"search", "search.trainable", "search.trials", "search.errors"}
    driver = sorted(m for m in reached if m not in worker_side
                    and not m.startswith(("search.spec", "train_fn")))
    assert driver == []
    assert {"search.spec", "search.trials", "train_fn.loop"} <= reached


def test_reached_follows_imports_transitively():
    graph = {"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert _reached("a", graph) == {"a", "b", "c"}


def test_no_private_name_crosses_a_module_boundary():
    """`from search.x import _name` only within the spec package (its files share private
    helpers; everything else imports its public surface)."""
    crossing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module in MODULES):
                continue
            private = [a.name for a in node.names if a.name.startswith("_")]
            inside_spec = module.startswith("search.spec.") and node.module.startswith(
                "search.spec.")
            if private and not inside_spec:
                crossing.append(f"{module} imports {', '.join(private)} from {node.module}")
    assert crossing == []
