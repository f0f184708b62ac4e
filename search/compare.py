"""Per-class Dice (and HD95) of a run against a baseline: absolute and relative change, as
Markdown and CSV tables, logged to the run's parent MLflow run. The two sides are read by
`search.scores` (a run folder, an nnU-Net summary, or a CSV).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from search.errors import CompareError
from search.runfolder import RunFolder
from search.scores import (  # noqa: F401 - the readers, importable from here too
    METRICS,
    MODELS,
    Scores,
    Stat,
    checkpoint_name,
    load_scores,
    nnunet_keys,
    read_csv,
    read_nnunet,
    read_run,
    region_names,
)
from search.tables import table
from train_fn.files import write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    metric: str
    cls: str  # a class name, or "mean"
    run: Stat | None
    baseline: Stat | None
    change: float | None
    change_pct: float | None
    note: str = ""  # for the mean row: over how many classes


# -- the table --------------------------------------------------------------------------------
def compare(run: Scores, baseline: Scores) -> list[Row]:
    """One row per class and metric (the run's classes first, then the baseline's others;
    a class on one side only has None on the other), and per metric a mean row over the
    classes both sides have. HD95 only where both sides have it."""
    rows = []
    for metric in METRICS:
        ours, theirs = run.metrics.get(metric), baseline.metrics.get(metric)
        if not ours or not theirs:
            continue
        shared = []
        for cls in dict.fromkeys([*ours, *theirs]):
            a, b = ours.get(cls), theirs.get(cls)
            rows.append(_row(metric, cls, a, b))
            if a is not None and b is not None:
                shared.append((a.mean, b.mean))
        total = len(set(ours) | set(theirs))
        mean_a = Stat(sum(a for a, _ in shared) / len(shared)) if shared else None
        mean_b = Stat(sum(b for _, b in shared) / len(shared)) if shared else None
        note = "" if len(shared) == total else f"{len(shared)} of {total} classes"
        rows.append(_row(metric, "mean", mean_a, mean_b, note))
    return rows


def _row(metric: str, cls: str, a: Stat | None, b: Stat | None, note: str = "") -> Row:
    change = a.mean - b.mean if a is not None and b is not None else None
    pct = 100 * change / b.mean if change is not None and b.mean != 0 else None
    return Row(metric, cls, a, b, change, pct, note)


def skipped(run: Scores, baseline: Scores) -> list[str]:
    """A line for each metric only one side has (not compared, but said)."""
    out = []
    for metric, shown in METRICS.items():
        has = [s.label for s in (run, baseline) if s.metrics.get(metric)]
        if len(has) == 1:
            out.append(f"{shown}: only {has[0]} has it; not compared.")
    return out


def to_markdown(rows: list[Row], run: Scores, baseline: Scores) -> str:
    """One Markdown table per metric; a dash where a side has no value."""
    out = [f"# {run.label} vs {baseline.label}", "",
           f"run: `{run.source}`  ", f"baseline: `{baseline.source}`"]
    for metric, shown in METRICS.items():
        mine = [r for r in rows if r.metric == metric]
        if not mine:
            continue
        digits = 4 if metric == "dice" else 2
        cells = [[f"**mean** ({r.note})" if r.note else ("**mean**" if r.cls == "mean"
                                                         else r.cls),
                  _stat(r.run, digits), _stat(r.baseline, digits), _signed(r.change, digits),
                  _signed(r.change_pct, 1)] for r in mine]
        out += ["", f"## {shown}", "",
                *table(["class", run.label, baseline.label, "change", "change %"], cells,
                       markdown=True, right=(1, 2, 3, 4))]
    notes = skipped(run, baseline)
    if notes:
        out += [""] + notes
    return "\n".join(out) + "\n"


def to_csv(rows: list[Row]) -> str:
    """The table as CSV; an empty cell where a side has no value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["metric", "class", "run_mean", "run_std", "baseline_mean", "baseline_std",
                     "change", "change_pct"])
    for r in rows:
        writer.writerow([r.metric, r.cls, *_cells(r.run), *_cells(r.baseline),
                         _num(r.change), _num(r.change_pct)])
    return buf.getvalue()


def _stat(stat: Stat | None, digits: int) -> str:
    if stat is None:
        return "-"
    return f"{stat.mean:.{digits}f}" + ("" if stat.std is None else f" ± {stat.std:.{digits}f}")


def _signed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _cells(stat: Stat | None) -> list[str]:
    return ["", ""] if stat is None else [_num(stat.mean), _num(stat.std)]


def _num(value: float | None) -> str:
    return "" if value is None else repr(round(value, 10))


def metrics_of(rows: list[Row], prefix: str) -> dict[str, float]:
    """MLflow metrics: `<prefix>/<metric>_change/<class>`, `..._change_pct/...` and
    `<prefix>/<metric>_baseline/<class>` (names limited to MLflow's characters)."""
    out = {}
    for r in rows:
        cls = re.sub(r"[^\w\-. :/]", "_", r.cls)
        for kind, value in (("change", r.change), ("change_pct", r.change_pct),
                            ("baseline", r.baseline.mean if r.baseline else None)):
            if value is not None:
                out[f"{prefix}/{r.metric}_{kind}/{cls}"] = value
    return out


# -- the command ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    markdown: str
    out_dir: Path
    mlflow_run_id: str | None


MAX_CLASSES = 1000


def compare_run(run_dir: str | Path, baseline: str | Path, model: str = "best",
                split: str = "test", baseline_model: str | None = None) -> Comparison:
    """Compare `model` of a run (best, greedy, uniform, or a checkpoint file or folder that
    `evaluate` scored) with a baseline (run folder, nnU-Net summary, CSV, or a checkpoint
    that `evaluate` scored in this run); write
    `compare.md` and `compare.csv` to `<run_dir>/compare/<model>-<split>-vs-<baseline>/` and
    log them, with the changes as metrics, to the run's parent MLflow run if it has one."""
    run_dir = Path(run_dir)
    ours = read_run(run_dir, model, split)
    if not Path(baseline).exists():
        raise CompareError(f"--baseline {baseline}: no such file or folder")
    if _is_checkpoint(Path(baseline)):  # another model of this run, scored by `evaluate`
        theirs = read_run(run_dir, str(baseline), split, option="--baseline")
    else:
        theirs = load_scores(baseline, baseline_model or (model if model in MODELS else "best"),
                             split, region_names(run_dir))
    classes = max((len(v) for v in theirs.metrics.values()), default=0)
    if classes > MAX_CLASSES:  # each class is a row, a file line and an MLflow metric
        raise CompareError(f"--baseline {baseline}: {classes:,} classes; a baseline has at "
                           f"most {MAX_CLASSES:,} (one row per class and metric)")
    rows = compare(ours, theirs)
    if not rows:
        raise CompareError(f"nothing to compare: {ours.label} has "
                           f"{', '.join(ours.metrics) or 'no metric'}, {theirs.label} has "
                           f"{', '.join(theirs.metrics) or 'no metric'}")
    markdown = to_markdown(rows, ours, theirs)
    shown = model if model in MODELS else checkpoint_name(model)
    name = _out_name(RunFolder(run_dir), f"{shown}-{split}-vs-{theirs.slug}", theirs.source)
    out = RunFolder(run_dir).compare_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.md", markdown)
    write_text(out / "compare.csv", to_csv(rows))
    run_id = _log(run_dir, rows, out, f"compare/{name}")
    return Comparison(markdown, out, run_id)


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint file (`.pt`), or a folder holding `checkpoint.pt` that is no run folder."""
    if path.is_dir():
        return (path / "checkpoint.pt").is_file() and not (path / "summary.json").exists()
    return path.suffix == ".pt"


def _out_name(folder: RunFolder, name: str, source: str) -> str:
    """`name`, or `name-<hash of the baseline's path>` where `name` holds the comparison with
    another baseline of the same file name (`x/baseline.csv`, `y/baseline.csv`): neither
    overwrites the other, in the folder or in MLflow."""
    md = folder.compare_dir(name) / "compare.md"
    if md.is_file() and f"baseline: `{source}`" not in md.read_text():
        return f"{name}-{hashlib.sha1(str(source).encode()).hexdigest()[:6]}"
    return name


def _log(run_dir: Path, rows: list[Row], out: Path, prefix: str) -> str | None:
    """Log to the run's parent MLflow run; a missing or unreachable store only warns."""
    folder = RunFolder(run_dir)
    if not folder.is_run():
        logger.warning("%s: no MLflow run recorded in run.json; the comparison is in files "
                       "only", run_dir)
        return None
    # The store may be gone or offline: the files are written.
    return folder.log_parent(metrics_of(rows, prefix), [out / "compare.md", out / "compare.csv"],
                             "the comparison is in files only", artifact_path=prefix)
