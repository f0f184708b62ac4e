"""`search.summary`: summary.json read into typed records and written back as it was, and no
product module reading the summary's keys by string (issue 26)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from helpers import product_modules

from search.runfolder import RunFolder
from search.summary import BestRecord, SiblingRecord, SoupRecord, Summary, TrialRecord

ROOT = Path(__file__).resolve().parents[2]

TRIAL = {"trial_id": "a1", "status": "completed", "config": {"optimizer.lr": 0.01}, "epochs": 4,
         "val_dice": 0.7, "val_dice_per_class": {"heart": 0.8},
         "val_hd95_per_class": {"heart": 3.0}, "best_epoch": 3, "avg_val_dice": 0.72,
         "checkpoint": "trial_a1/checkpoint_000003", "error": None}
STOPPED = {**{k: v for k, v in TRIAL.items() if k != "avg_val_dice"}, "trial_id": "b2",
           "status": "stopped", "val_dice": None, "best_epoch": None, "checkpoint": None}
SIBLING = {"trial_id": "sibling1", "status": "finished", "config": {"optimizer.lr": 0.01},
           "seed": 1, "fork_of": "a1", "fork_epoch": 2, "val_dice": 0.71,
           "val_dice_per_class": {"heart": 0.8}, "checkpoint": "siblings/x/checkpoint_000004"}
SCORES = {"val_dice": 0.7, "val_dice_per_class": {"heart": 0.8}, "test_dice": 0.6,
          "test_dice_per_class": {"heart": 0.6}, "test_hd95_per_class": {"heart": 4.0}}
SUMMARY = {
    "name": "smoke", "metric": "val_dice", "run_dir": "runs/smoke", "trials": [TRIAL, STOPPED],
    "best": {"trial_id": "a1", "config": {"optimizer.lr": 0.01}, **SCORES,
             "checkpoint": "trial_a1/checkpoint_000003"},
    "soups": {"uniform": {"ingredients": ["a1", "a1:avg"], **SCORES,
                          "weights": ".soup-1-2/uniform/checkpoint.pt"},
              "greedy": {"ingredients": ["a1"], "val_dice": 0.7, "val_dice_per_class": {},
                         "steps": [{"trial_id": "a1", "val_dice": 0.7, "accepted": True}],
                         "test_dice": 0.6, "test_dice_per_class": {}, "test_hd95_per_class": {},
                         "weights": ".soup-1-2/greedy/checkpoint.pt"}},
    "siblings": [SIBLING],
    "reference": {"models": {"best": {"mean": {"mean": 0.6}}}},
    "result_set": ".soup-1-2", "soup_set": ".soup-1-2",
    "from_a_later_version": {"kept": True},
}


def test_a_summary_reads_into_typed_records_and_writes_back_as_it_was(tmp_path):
    folder = RunFolder(tmp_path)
    folder.summary_json.write_text(json.dumps(SUMMARY))
    summary = folder.summary()
    assert isinstance(summary.trials[0], TrialRecord) and summary.trials[0].avg_val_dice == 0.72
    assert isinstance(summary.best, BestRecord) and summary.best.test_dice == 0.6
    assert isinstance(summary.soups["greedy"], SoupRecord)
    assert summary.soups["greedy"].steps[0]["accepted"] is True
    assert isinstance(summary.siblings[0], SiblingRecord) and summary.siblings[0].fork_of == "a1"
    assert summary.extra == {"from_a_later_version": {"kept": True}}
    folder.write_summary(summary)
    assert json.loads(folder.summary_json.read_text()) == SUMMARY


def test_a_search_summary_before_its_soup_step_has_no_soup_keys():
    written = Summary(name="s", run_dir="runs/s", trials=[TrialRecord.from_json(TRIAL)])
    assert written.to_json() == {"name": "s", "metric": "val_dice", "run_dir": "runs/s",
                                 "trials": [TRIAL], "best": None, "soups": None,
                                 "soup_set": None}


def test_the_records_answer_what_the_commands_ask():
    summary = Summary.from_json(SUMMARY)
    assert [t.usable for t in summary.trials] == [True, False]
    assert summary.trial("b2").status == "stopped" and summary.trial("zz") is None
    assert summary.regions() == ["heart"]
    assert summary.model("best") is summary.best and summary.model("greedy").ingredients == ["a1"]
    assert summary.recommended() == "best"  # a greedy soup of one is the best trial
    summary.soups["greedy"].ingredients = ["a1", "sibling1"]
    assert summary.recommended() == "greedy"
    assert Summary().recommended() == "best" and Summary().model("uniform") is None


# -- no module reads the summary by string -------------------------------------------------------

def summary_indexing(root: Path = ROOT) -> list[str]:
    """`path:line code` of each string subscript or `.get`/`.pop` with a string key on an
    expression that names a summary (`summary[...]`, `folder.summary().get(...)`), in
    search/ and train_fn/ outside `search/summary.py`."""
    return [f"{rel}:{node.lineno} {ast.unparse(node)}" for rel, tree in product_modules(root)
            if rel not in ALLOWED for node in ast.walk(tree)
            if _names_a_summary(_string_key_target(node))]


ALLOWED = {"search/summary.py"}


def _string_key_target(node: ast.AST) -> ast.AST | None:
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and isinstance(node.slice.value, str):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("get", "pop", "setdefault") and node.args \
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.func.value
    return None


def _names_a_summary(node: ast.AST | None) -> bool:
    """A name bound to a summary (`summary`, `run_summary`), summary.json read (`.summary()`),
    or one of them indexed further (`summary["best"]["trial_id"]`). A typed record's own
    fields (`summary.soups["greedy"]`: soups by kind) are not."""
    while isinstance(node, ast.Subscript | ast.Call) and not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("summary", "loads")):
        node = node.value if isinstance(node, ast.Subscript) else node.func
        if isinstance(node, ast.Attribute) and node.attr in ("get", "pop", "setdefault"):
            node = node.value
    if isinstance(node, ast.Call):
        return node.func.attr == "summary" or "summary" in ast.unparse(node.args).lower()
    return isinstance(node, ast.Name) and "summary" in node.id.lower()


def test_no_module_reads_the_summary_by_string():
    assert summary_indexing() == []


def test_the_check_finds_a_summary_read_by_string(tmp_path):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "x.py").write_text(
        "def f(folder, summary, path):\n"
        "    a = summary.best, summary.soups['greedy'], (summary.reference or {}).get('x')\n"
        "    b = summary['trials'], summary.get('best')['trial_id']\n"
        "    c = json.loads(path.read_text())['soups'], json.loads(summary_file.read())['best']\n"
        "    return folder.summary().get('soups'), a, b, c\n")
    assert sorted(summary_indexing(tmp_path)) == [
        "search/x.py:3 summary.get('best')", "search/x.py:3 summary.get('best')['trial_id']",
        "search/x.py:3 summary['trials']", "search/x.py:4 json.loads(summary_file.read())['best']",
        "search/x.py:5 folder.summary().get('soups')"]
