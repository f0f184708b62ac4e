"""Scores to compare: a run's or a baseline's per-class Dice (and HD95), read into one small
table, `Scores`: metric ("dice", "hd95") -> class name -> `Stat(mean, std or None)`, or None
where a class is listed without a value (nnU-Net writes NaN for a class absent from every
case). Inputs: a segtune run folder (its nnU-Net-style `eval/<model>-<split>/summary.json` if
present, else the held-out scores in `summary.json`), an nnU-Net `summary.json`, or a
hand-written CSV `class,mean[,std][,metric]`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import CompareError
from search.lazy import LazyModule
from search.runfolder import MODELS, RunFolder
from search.summary import Summary

# Read a checkpoint only where `--model` is a path: torch is not imported for a CSV.
inputs = LazyModule("search.inputs")
predict = LazyModule("search.predict")

logger = logging.getLogger(__name__)

METRICS = {"dice": "Dice", "hd95": "HD95"}  # our name -> nnU-Net's key and the shown name
CSV_COLUMNS = ("class", "mean", "std", "metric")
CSV_HEADER = "class,mean[,std][,metric]"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None = None


@dataclass(frozen=True)
class Scores:
    """One side of a comparison: `label` names it in the table, `slug` in file names,
    `source` is the file it was read from."""
    label: str
    slug: str
    metrics: dict[str, dict[str, Stat | None]]
    source: str = ""


def load_scores(path: str | Path, model: str = "best", split: str = "test",
                names: dict[str, str] | None = None) -> Scores:
    """A run folder, an nnU-Net summary `.json` or a `.csv`, by what `path` is. `names`
    maps an nnU-Net summary's label keys to region names (see `region_names`)."""
    path = Path(path)
    if path.is_dir():
        return read_run(path, model, split)
    if not path.exists():
        raise CompareError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    if path.suffix.lower() == ".json":
        return read_nnunet(path, names)
    raise CompareError(f"{path}: expected a run folder, an nnU-Net summary .json or a .csv")


def read_run(run_dir: str | Path, model: str = "best", split: str = "test",
             option: str = "--model") -> Scores:
    """Scores of `model` (best | greedy | uniform) on `split` in a segtune run folder: from
    `eval/<model>-<split>/summary.json` if present, else from the run's `summary.json`
    (Dice only; `split` test or val); or of a checkpoint file or folder `model`, from the
    `eval/<name>-<split>/summary.json` that `evaluate` wrote for it (`option` names the
    argument in errors)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareError(f"{run_dir}: no such run folder")
    folder = RunFolder(run_dir)
    if model not in MODELS:  # a checkpoint file or folder: scored by `evaluate` only
        shown = checkpoint_name(model, option)
        evaluated = folder.eval_dir(shown, split) / "summary.json"
        if not evaluated.is_file():
            raise CompareError(f"{option} {model}: not scored on the {split} split yet (no "
                               f"{evaluated}); score it with: python -m search evaluate "
                               f"{run_dir} --model {model} --split {split}")
        label, slug = f"{run_dir.resolve().name} {shown} ({split})", _slug(shown)
        return Scores(label, slug, read_nnunet(evaluated).metrics, str(evaluated))
    name = run_dir.resolve().name
    label, slug = f"{name} {model} ({split})", f"{_slug(name)}-{model}"
    evaluated = folder.eval_dir(model, split) / "summary.json"
    if evaluated.is_file():
        return Scores(label, slug, read_nnunet(evaluated).metrics, str(evaluated))
    summary_path = folder.summary_json
    if not summary_path.is_file():
        raise CompareError(f"{run_dir}: no results (neither {evaluated.relative_to(run_dir)} "
                           "nor summary.json: not a finished segtune run folder)")
    if split not in ("test", "val"):
        raise CompareError(f"{run_dir}: no {evaluated.relative_to(run_dir)}, and summary.json "
                           f"holds the test and val splits only, not {split!r}")
    data = _json(summary_path)
    summary = Summary.from_json(data) if isinstance(data, dict) else Summary()
    where = "best" if model == "best" else f"soups.{model}"
    entry = summary.model(model)
    per_class = getattr(entry, f"{split}_dice_per_class", None)
    if not isinstance(per_class, dict) or not per_class:
        what, why = (("the best trial", "its test evaluation") if model == "best" else
                     (f"the {model} soup", "souping"))
        raise CompareError(f"{summary_path}: no {split} scores for {what} (the run ended "
                           f"before {why}; finish it with: python -m search soup {run_dir})")
    dice = {_key(k): _value(v, summary_path, f"{where}.{split}_dice_per_class.{k}")
            for k, v in per_class.items()}
    metrics = {"dice": dice}
    per_hd = getattr(entry, f"{split}_hd95_per_class", None)
    if isinstance(per_hd, dict) and per_hd:
        metrics["hd95"] = {_key(k): _value(v, summary_path, f"{where}.{split}_hd95_per_class.{k}")
                           for k, v in per_hd.items()}
    return Scores(label, slug, metrics, str(summary_path))


def checkpoint_name(model: str, option: str = "--model") -> str:
    """The name `evaluate` gives a checkpoint file or folder `model` (its scores are in
    `eval/<name>-<split>/`), or one line why `model` is not a checkpoint: no such file, or a
    file `torch.load(weights_only=True)` refuses or that holds no model weights."""
    path = predict.checkpoint_file(model, option)
    inputs.read_checkpoint(path, model, option)
    return predict.checkpoint_label(path)


def region_names(run_dir: Path) -> dict[str, str]:
    """How nnU-Net names a run's regions in its summary.json (the label id, "1", or a
    region's ids, "(1, 2, 3)") -> the run's region name, from the run's dataset. Empty when
    the dataset cannot be opened (the keys are then compared as they are)."""
    try:
        dataset = RunFolder(run_dir).dataset
    except Exception as err:  # noqa: BLE001 - a moved data folder: compare the keys as given
        logger.info("%s: region names not read from the run's data (%s)", run_dir, err)
        return {}
    return nnunet_keys(dataset.regions)


def nnunet_keys(regions: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """nnU-Net's summary key of each region -> its name: `str(label)` for one label,
    `str(tuple)` for a region of several (nnU-Net's `region_or_label` as text)."""
    return {str(ids[0]) if len(ids) == 1 else str(tuple(ids)): name
            for name, ids in regions.items()}


def read_nnunet(path: str | Path, names: dict[str, str] | None = None) -> Scores:
    """Per-class means of an nnU-Net-style `summary.json` ("mean": {class: {"Dice", "HD95",
    ...}}). A value may be a number or {"mean", "std"}; a top-level "std" section of the same
    shape gives stds too. `names` turns nnU-Net's label keys into region names."""
    path = Path(path)
    data = _json(path)
    means = data.get("mean") if isinstance(data, dict) else None
    if not isinstance(means, dict) or not means:
        raise CompareError(f"{path}: not an nnU-Net summary (no per-class 'mean' section)")
    stds = data.get("std") if isinstance(data.get("std"), dict) else {}
    names = names or {}
    if any(k in names for k in means):
        logger.info("%s: labels %s read as %s", path, ", ".join(names),
                    ", ".join(names.values()))
    metrics: dict[str, dict[str, Stat | None]] = {}
    for raw, values in means.items():
        if not isinstance(values, dict):
            raise CompareError(f"{path}: mean.{raw}: expected {{metric: value}}, got {values!r}")
        cls = _key(names.get(raw, raw))
        for ours, theirs in METRICS.items():
            if theirs in values:
                stat = _value(values[theirs], path, f"mean.{raw}.{theirs}")
                std = (stds.get(raw) or {}).get(theirs)
                if stat is not None and stat.std is None and std is not None:
                    extra = _value(std, path, f"std.{raw}.{theirs}")
                    stat = Stat(stat.mean, extra.mean if extra else None)
                metrics.setdefault(ours, {})[cls] = stat
    if not metrics:
        raise CompareError(f"{path}: no Dice or HD95 in its 'mean' section")
    stem = path.parent.name if path.stem == "summary" and path.parent.name else path.stem
    label = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return Scores(label, _slug(stem), metrics, str(path))


def read_csv(path: str | Path) -> Scores:
    """A hand-written baseline: header `class,mean` plus optional `std` and `metric`
    (dice | hd95, default dice) columns, one row per class (and metric)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CompareError(f"{path}: not a UTF-8 text file ({err.reason} at byte "
                           f"{err.start})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise CompareError(f"{path}: empty (expected the header {CSV_HEADER})")
    rows = [next(csv.reader([line])) for _, line in lines]
    header_line, header = lines[0][0], [c.strip().lower() for c in rows[0]]
    for column in header:
        if column not in CSV_COLUMNS:
            raise CompareError(f"{path}, line {header_line}: unknown column {column!r} "
                               f"(the header is {CSV_HEADER})")
    for column in ("class", "mean"):
        if column not in header:
            raise CompareError(f"{path}, line {header_line}: no {column!r} column (the header "
                               f"is {CSV_HEADER})")
    if len(set(header)) < len(header):
        raise CompareError(f"{path}, line {header_line}: a column is named twice")
    if len(rows) == 1:
        raise CompareError(f"{path}: no rows after the header")
    metrics: dict[str, dict[str, Stat | None]] = {}
    seen: dict[tuple[str, str], int] = {}
    for (n, _), cells in zip(lines[1:], rows[1:], strict=True):
        if len(cells) != len(header):
            raise CompareError(f"{path}, line {n}: {len(cells)} cells, the header has "
                               f"{len(header)}")
        row = {c: cell.strip() for c, cell in zip(header, cells, strict=True)}
        metric = row.get("metric", "").lower() or "dice"
        if metric not in METRICS:
            raise CompareError(f"{path}, line {n}, column 'metric': {row['metric']!r} is not "
                               f"one of {', '.join(METRICS)}")
        cls = _key(row["class"])
        if not cls or cls == "mean":
            raise CompareError(f"{path}, line {n}, column 'class': {row['class']!r} is not a "
                               "class name (the mean row is computed from the classes)")
        if (cls, metric) in seen:
            raise CompareError(f"{path}, line {n}: class {cls!r} ({metric}) given twice "
                               f"(first on line {seen[cls, metric]})")
        seen[cls, metric] = n
        mean = _number(row["mean"], path, n, "mean")
        std = _number(row["std"], path, n, "std") if row.get("std") else None
        if metric == "dice" and not 0 <= mean <= 1:
            raise CompareError(f"{path}, line {n}, column 'mean': Dice {row['mean']} is outside "
                               "[0, 1] (write 0.79 for 79%)")
        if std is not None and std < 0:
            raise CompareError(f"{path}, line {n}, column 'std': {row['std']} is negative")
        metrics.setdefault(metric, {})[cls] = Stat(mean, std)
    return Scores(path.name, _slug(path.stem), metrics, str(path))


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CompareError(f"{path}, line {line}, column {column!r}: {text!r} is not a number")
    return value


def _value(value: Any, path: Path, key: str) -> Stat | None:
    """A number, or {"mean", "std"}; NaN and null are a missing value (None)."""
    std = None
    if isinstance(value, dict) and "mean" in value:
        value, std = value["mean"], value.get("std")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            std is None or isinstance(std, (int, float))):
        raise CompareError(f"{path}: {key}: expected a number or {{mean, std}}, got {value!r}")
    if std is not None and math.isnan(std):
        std = None
    return Stat(float(value), None if std is None else float(std))


def _key(name: Any) -> str:
    return str(name).strip().lower()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "baseline"
