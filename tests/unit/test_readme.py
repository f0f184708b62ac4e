"""README.md stays true to the code: its spec-key and CLI tables are what `docs/reference.py`
generates from `search/spec/` and the CLI parser, every spec key is described, every link to a
section lands on one, every `python -m search` command names real options, and the Install,
Tests and First run commands are the ones CI (`.ci/run`) runs."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _reference():
    spec = importlib.util.spec_from_file_location("reference", ROOT / "docs" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _reference()


def section(heading: str) -> str:
    """The text under a heading (`## Install`), up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    start = README.index(f"\n{heading}\n") + len(heading) + 2
    rest = README[start:]
    stops = [m.start() for m in re.finditer(r"(?m)^(#+) ", rest) if len(m.group(1)) <= len(level)]
    return rest[:stops[0]] if stops else rest


def table_keys(text: str) -> dict[str, str]:
    """Spec key -> its description, from the README's generated spec-key table."""
    block = text[text.index(reference.SPEC_BEGIN):text.index(reference.SPEC_END)]
    rows = [reference._cells(line) for line in block.splitlines() if line.startswith("| `")]
    return {cells[0].strip("`"): cells[4] for cells in rows}


@pytest.mark.parametrize(("annotation", "text"), [
    (Annotated[int, Field(ge=1, le=100_000)], "int 1 to 100,000"),
    (Annotated[float, Field(gt=0, lt=1)], "float > 0 to < 1"),
    (Annotated[int, Field(ge=0, lt=2**32)], "int 0 to < 2^32"),
    (Literal["tpe", "random", "grid"], "tpe \\| random \\| grid"),
    (tuple[Annotated[int, Field(ge=1, le=4096)], ...], "list of int 1 to 4,096"),
    (tuple[int, int, int], "3 x int"),
    (dict[int, str], "map int: text"),
    (bool, "true \\| false"),
])
def test_describe_writes_a_type_as_a_reader_does(annotation, text):
    assert reference.describe(annotation) == text


def test_every_spec_key_has_a_described_row():
    keys = [row[0] for row in reference.spec_rows()]
    assert "optimizer.lr" in keys and "lr_finder.span" in keys and len(keys) > 90
    said = table_keys(README)
    missing = [k for k in keys if k not in said]
    assert not missing, (f"README.md's spec-key table lacks {missing}: run python "
                         "docs/reference.py --write and describe them")
    assert [k for k, what in said.items() if not what] == []
    assert sorted(set(said) - set(keys)) == []


def test_the_generated_tables_are_what_the_code_says():
    """Defaults, types, ranges, searchability and every CLI option as the code has them."""
    assert reference.rendered(README) == README, \
        "README.md's spec-key or CLI tables are out of date: run python docs/reference.py --write"


def test_a_new_key_shows_as_an_undescribed_row():
    """What a new spec key would do to the README: a row, with its last column empty."""
    without = re.sub(r"(?m)^\| `train\.ema_decay` \|.*\n", "", README)
    assert "train.ema_decay" not in table_keys(without)
    assert table_keys(reference.rendered(without))["train.ema_decay"] == ""


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_section_lands_on_one():
    anchors = {_slug(h) for h in re.findall(r"(?m)^#+ (.*)$", README)}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert len(links) > 20
    assert sorted(links - anchors) == []


def test_every_linked_file_exists():
    paths = {p for p in re.findall(r"\]\(([^)#:]+)\)", README)}
    assert "docs/ARCHITECTURE.md" in paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def _commands() -> list[list[str]]:
    """Every `python -m search ...` line of the README's code, as words, comments cut off."""
    out = []
    for line in re.sub(r"\\\n\s+", " ", README).splitlines():  # continued lines joined
        text = line.strip()
        if text.startswith("python -m search ") and (line.startswith("    ") or "`" not in line):
            words = text.split("  #", 1)[0].replace("\\", "").replace("[", " ").replace("]", " ")
            out.append(shlex.split(words))
    return out


def test_every_command_names_a_real_subcommand_and_options():
    from search import cli

    parser = cli._parser()
    commands = _commands()
    keys = {row[0] for row in reference.spec_rows()}
    assert len(commands) > 20
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    wrong = []
    for words in commands:
        name = next(w for w in words[3:] if not w.startswith("-"))
        if name not in subparsers:
            wrong.append(" ".join(words))
            continue
        known = subparsers[name]._option_string_actions
        wrong += [f"{name} {w}" for w in words[3:] if w.startswith("-")
                  and w.split("=", 1)[0] not in known and w not in ("--debug",)]
        wrong += [f"--set {v}" for w, v in zip(words, words[1:], strict=False)
                  if w == "--set" and v.split("=", 1)[0] not in keys]
    assert wrong == []


def test_install_tests_and_first_run_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = {h: [line.split("  #", 1)[0].strip() for line in section(h).splitlines()
                  if line.startswith("    ")] for h in ("## Install", "## First run", "## Tests")}
    assert blocks["## Install"] == [
        "sudo apt-get update && sudo apt-get install -y chromium chromium-driver",
        "python3 -m venv .venv && source .venv/bin/activate",
        "pip install torch==2.13.0", "pip install -e '.[test]'"]
    for command in ("apt-get install -y -qq chromium chromium-driver", "python3 -m venv .venv",
                    "source .venv/bin/activate", "pip install torch==2.13.0",
                    "pip install -e '.[test]'"):
        assert command in ci
    assert blocks["## First run"][0] == "python -m search run spaces/novograd.yaml"
    assert "\npython -m search run spaces/novograd.yaml\n" in ci
    assert blocks["## Tests"][:2] == ["ruff check .", "python -m pytest"]
    assert "\nruff check .\n" in ci and "SEGTUNE_REQUIRE_BROWSER=1 python -m pytest" in ci


def test_every_yaml_example_is_a_valid_spec(tmp_path):
    from search.spec import load_spec

    examples = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    assert examples
    for i, text in enumerate(examples):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(text)
        load_spec(path)
