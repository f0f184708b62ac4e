"""`summary.json`, typed: the one place that knows its keys.

A finished search writes it (`search.api`), the soup step rewrites it (`search.soup`), and every
command that reads a run's results (report, predict, repeat, crossval, plots, MLflow results)
reads it through `RunFolder.summary()` as a `Summary` (compare's `search.scores` too, with
`Summary.from_json` and errors of its own). On disk it stays plain JSON (scripts and CI read
it so): a `Summary` holds

- `trials`: one `TrialRecord` per trial, best validation Dice first;
- `best`: the best trial scored on the held-out test split (`ScoredRecord`);
- `soups`: the uniform and greedy soups (`SoupRecord`), or None;
- `siblings` (`soup.siblings`), `reference` (per-case spread and intervals, `search.reference`),
  `crossval` (`cv.folds`), `result_set` and `soup_set` (the MLflow result runs and the soup
  folder in use, see `search.soup.switch_soups`).

Keys this version does not know are kept in each record's `extra` and written back, so a run
of another version survives a soup step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self


@dataclass
class Record:
    """A summary.json record: `from_json` / `to_json`, unknown keys kept in `extra`. The
    fields in `OPTIONAL` are written only when set (not None)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OPTIONAL):
                continue
            out[f.name] = value.to_json() if isinstance(value, Record) else value
        return {**out, **self.extra}


@dataclass
class TrialRecord(Record):
    """A trial: its searched values, its best epoch's validation scores and checkpoint
    (relative to the run's experiment), how it ended. Also a soup candidate: `weights`
    "averaged" names the checkpoint's averaged weights (`train.average`) instead of its own."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"avg_val_dice", "seed", "fork_of", "fork_epoch", "weights"})

    trial_id: str
    status: str = ""  # completed | stopped[: why] | error (siblings: finished | error)
    config: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    val_dice: float | None = None
    val_dice_per_class: dict[str, float] = field(default_factory=dict)
    val_hd95_per_class: dict[str, float] | None = None
    best_epoch: int | None = None
    avg_val_dice: float | None = None  # the averaged weights' (train.average)
    checkpoint: str | None = None
    error: str | None = None
    seed: int | None = None  # a sibling's (soup.siblings)
    fork_of: str | None = None
    fork_epoch: int | None = None
    weights: str | None = None

    @property
    def usable(self) -> bool:
        """Whether it may be the best trial or an ingredient: it did not error, and it has a
        checkpoint and a score."""
        return self.status != "error" and bool(self.checkpoint) and self.val_dice is not None


@dataclass
class SiblingRecord(TrialRecord):
    """A sibling of the best trial (`search.siblings`): trained from its fork point with
    another seed; no epochs, HD95 or error of its own in summary.json."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"avg_val_dice", "weights", "epochs", "val_hd95_per_class", "best_epoch", "error"})


@dataclass
class ScoredRecord(Record):
    """A model scored on the validation and the held-out test split: the best trial (with its
    trial id, settings and checkpoint) or a soup."""

    val_dice: float | None = None
    val_dice_per_class: dict[str, float] = field(default_factory=dict)
    test_dice: float | None = None
    test_dice_per_class: dict[str, float] = field(default_factory=dict)
    test_hd95_per_class: dict[str, float] = field(default_factory=dict)


@dataclass
class BestRecord(ScoredRecord):
    """The best trial, scored on the test split (`best` in summary.json)."""

    trial_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()  # in the order summary.json has always had
        order = ["trial_id", "config", "val_dice", "val_dice_per_class", "test_dice",
                 "test_dice_per_class", "test_hd95_per_class", "checkpoint"]
        return {**{k: data.pop(k) for k in order}, **data}


@dataclass
class SoupRecord(ScoredRecord):
    """A soup: its ingredients (trial ids, `:avg` for averaged weights), the greedy soup's
    steps, and its weights' file in the soup set."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"steps", "weights"})

    ingredients: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] | None = None  # greedy: {trial_id, val_dice, accepted} each
    weights: str | None = None  # `<soup set>/<kind>/checkpoint.pt`

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        return {"ingredients": data.pop("ingredients"), **data}


@dataclass
class Summary(Record):
    """summary.json: a run's trials and results (see the module's docstring)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"siblings", "reference", "crossval", "result_set"})

    name: str = ""
    metric: str = "val_dice"
    run_dir: str = ""
    trials: list[TrialRecord] = field(default_factory=list)
    best: BestRecord | None = None
    soups: dict[str, SoupRecord] | None = None
    siblings: list[SiblingRecord] | None = None
    reference: dict[str, Any] | None = None  # search.reference's record
    crossval: dict[str, Any] | None = None  # search.retrain's results, without the jobs
    result_set: str | None = None
    soup_set: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        summary = super().from_json(data)
        summary.trials = [TrialRecord.from_json(t) for t in summary.trials]
        if summary.best is not None:
            summary.best = BestRecord.from_json(summary.best)
        if summary.soups is not None:
            summary.soups = {k: SoupRecord.from_json(s) for k, s in summary.soups.items()}
        if summary.siblings is not None:
            summary.siblings = [SiblingRecord.from_json(s) for s in summary.siblings]
        return summary

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["trials"] = [t.to_json() for t in self.trials]
        if self.soups is not None:
            data["soups"] = {k: s.to_json() for k, s in self.soups.items()}
        if self.siblings is not None:
            data["siblings"] = [s.to_json() for s in self.siblings]
        return data

    def trial(self, trial_id: str) -> TrialRecord | None:
        """The record of trial `trial_id`, or None."""
        return next((t for t in self.trials if t.trial_id == trial_id), None)

    def recommended(self) -> str:
        """The model a finished run recommends: the greedy soup when it holds more than the
        best trial (it is at least as good on the validation cases by construction), else the
        best trial. Chosen without the test split."""
        greedy = (self.soups or {}).get("greedy")
        return "greedy" if greedy and len(greedy.ingredients) > 1 else "best"

    def model(self, name: str) -> ScoredRecord | None:
        """The record of model `name`: `best` or a soup (None when the run has none)."""
        return self.best if name == "best" else (self.soups or {}).get(name)

    def regions(self) -> list[str]:
        """The scored regions, in the order the trials report them."""
        return next((list(t.val_dice_per_class) for t in self.trials if t.val_dice_per_class),
                    [])


@dataclass
class Evaluation(Record):
    """An evaluation's `summary.json` (`search.evaluate`), in nnU-Net's layout: the scores of
    each case per region (`metric_per_case`: reference and prediction files, `metrics`), the
    per-region `mean` and the `foreground_mean`; `segtune` says what was evaluated (run,
    model, checkpoint, split, cases and output folder; or the two folders compared)."""

    metric_per_case: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    foreground_mean: dict[str, float] = field(default_factory=dict)
    segtune: dict[str, Any] = field(default_factory=dict)

    @property
    def out_dir(self) -> str | None:
        """Where `evaluate_run` wrote the predictions and this file."""
        return self.segtune.get("out_dir")
