"""docs/ARCHITECTURE.md's module table ("The rooms") names every module of search/ and
train_fn/, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def table_paths(text: str) -> set[str]:
    """The paths the first column of the module table names. A bare name (`predict.py`) is in
    the folder of the path before it in its cell; a path ending in `/` names a package."""
    paths = set()
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if "/" in name.rstrip("/"):
                folder = name.rstrip("/").rsplit("/", 1)[0] + "/"
                paths.add(name)
            else:
                paths.add(folder + name)
    return paths


def modules() -> set[str]:
    """Every module file of search/ and train_fn/ but the packages' empty `__init__.py`."""
    return {p.relative_to(ROOT).as_posix() for package in ("search", "train_fn")
            for p in (ROOT / package).rglob("*.py") if p.read_text().strip()}


def covered(module: str, paths: set[str]) -> bool:
    return module in paths or any(p.endswith("/") and module.startswith(p) for p in paths)


def test_table_paths_reads_bare_names_in_the_folder_before_them():
    text = "| module | holds |\n| `search/a.py`, `b.py` | x |\n| `train_fn/c.py` | y |\n"
    assert table_paths(text) == {"search/a.py", "search/b.py", "train_fn/c.py"}


def test_every_module_is_in_the_table():
    paths = table_paths((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    assert sorted(m for m in modules() if not covered(m, paths)) == []


def test_the_table_names_only_modules_that_exist():
    paths = table_paths((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
