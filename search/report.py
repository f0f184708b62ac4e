"""The table printed at the end of a run, from its summary (`search.soup` writes summary.json)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from search.reference import format_reference
from search.summary import ScoredRecord, Summary
from search.tables import table
from search.tracking import ui_base, ui_command


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _short(name: str) -> str:
    """A column header: the region's name, cut to 5 characters (any dataset's regions)."""
    return name[:5]


def format_summary(summary: Summary, searched: list[str]) -> str:
    """Trials (best first), then the best trial and the soups on the test split."""
    names = summary.regions()
    classes = [_short(c) for c in names]

    def _classes(per_class: dict[str, float] | None) -> list[str]:
        return [_f((per_class or {}).get(name)) for name in names]

    rows = []
    for t in summary.trials:
        rows.append([t.trial_id, t.status, "" if t.epochs is None else str(t.epochs),
                     _f(t.val_dice), *_classes(t.val_dice_per_class),
                     *[_fmt_param(t.config.get(k)) for k in searched]])
    short = [k.rsplit(".", 1)[-1] for k in searched]
    out = ["Trials (validation Dice of each trial's best epoch):"]
    out += table(["trial", "status", "epochs", "val_dice", *classes, *short], rows)
    errors = [t for t in summary.trials if t.error]
    if errors:
        out += ["", "Errors:"] + [f"  {t.trial_id}: {t.error}" for t in errors]
    best = summary.best
    if best:
        out += ["", *_held_out(summary, names, classes)]
    if summary.reference:
        out += ["", *format_reference(summary.reference)]
    return "\n".join(out)


def _held_out(summary: Summary, names: list[str], classes: list[str]) -> list[str]:
    """The best trial and the soups on the test split: per region and over regions the mean
    over the test cases, with the std over them where the run scored each case (the
    reference, made with the soups); else a line saying where the spread is."""
    ref = summary.reference or {}
    spread = ref.get("models") or {}

    def cells(name: str, record: ScoredRecord) -> list[str]:
        per_case = spread.get(name)
        stds = ([(per_case["mean"]["std"])] + [
            (per_case["regions"].get(n) or {}).get("std") for n in names]) if per_case else []
        values = [record.test_dice, *[(record.test_dice_per_class or {}).get(n)
                                      for n in names]]
        return [_f(v) if not stds or v is None or stds[i] is None else f"{v:.3f}±{stds[i]:.3f}"
                for i, v in enumerate(values)]

    best = summary.best
    assert best is not None  # only called for a run with a best trial
    rows = [["best trial " + best.trial_id, "1", _f(best.val_dice), *cells("best", best)]]
    for kind, soup in (summary.soups or {}).items():
        rows.append([f"{kind} soup", str(len(soup.ingredients)), _f(soup.val_dice),
                     *cells(kind, soup)])
    if spread:
        head = (f"Held-out test split (mean±std over its {len(ref.get('cases') or [])} cases; "
                "not used for any selection):")
    else:
        head = ("Held-out test split (means over its cases, not used for any selection; "
                "their spread: python -m search evaluate RUN_DIR):")
    return [head, *table(["model", "size", "val_dice", "test_dice", *classes], rows)]


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def next_steps(summary: Summary, run_dir: str | Path, tracking_uri: str | None,
               view: str | None) -> list[str]:
    """What a finished run points to: its best checkpoint, plots, Optuna study, MLflow view
    and the command that segments new images with the recommended model."""
    run_dir = Path(run_dir).resolve()
    lines = [f"run folder:       {run_dir}  (summary.json, soup/)"]
    best = summary.best
    if best and best.checkpoint:
        lines.append(f"best checkpoint:  {run_dir / best.checkpoint}  "
                     f"(trial {best.trial_id})")
    if (run_dir / "plots").is_dir():
        lines.append(f"plots:            {run_dir / 'plots'}/")
    if (run_dir / "optuna.db").is_file():
        study = shlex.quote(f"sqlite:///{run_dir / 'optuna.db'}")
        lines.append(f"Optuna study:     {run_dir / 'optuna.db'}  (optuna-dashboard {study})")
    if tracking_uri:
        command = (f"{ui_command(tracking_uri)}, then open " if ui_command(tracking_uri)
                   else "open ")
        lines.append(f"MLflow:           {command}{view or ui_base(tracking_uri)}")
    if best:
        lines.append(f"predict:          python -m search predict "
                     f"{shlex.quote(str(run_dir))} -i SCANS/ -o SEGMENTATIONS/ "
                     f"--model {summary.recommended()}")
    return lines
