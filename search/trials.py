"""What a trial or retrain job trains, as pure functions of the spec: its concrete spec, its
length, its settings as one line. Shared by the driver (scheduler, callbacks, results) and
the Ray workers (`search.trainable`); imports neither Ray nor torch."""

from __future__ import annotations

from typing import Any

from search.spec import Spec


def values_text(values: dict[str, Any], digits: int = 3) -> str:
    """`optimizer.lr=0.0125, layers.early_encoder=0.386`: settings as one line, floats to
    `digits` significant digits (the terminal's lines, MLflow's tags, `--dry-run`, the
    workers' logs)."""
    return ", ".join(f"{k}={v:.{digits}g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def budget(spec: Spec) -> int:
    """A trial's length in reports: epochs, or folds with `cv.mode: every`."""
    return spec.cv.folds if spec.cv.every else spec.train.epochs


def fork_epoch(spec: Spec) -> int | None:
    """The epoch (1-based) whose state a trial keeps for sibling soups (`Spec.fork_epoch`)."""
    return spec.fork_epoch()


def search_epochs(spec: Spec) -> int | None:
    """The epochs `search.budget_epochs` leaves to the trials (`Spec.search_epochs`)."""
    return spec.search_epochs()


def job_spec(base: Spec, job: dict[str, Any]) -> Spec:
    """The concrete spec of a job: the trial's configuration, and its seed for the patch
    order and the initial weights (a sibling keeps the trial's initial weights: it continues
    the trial's own training)."""
    spec = base.resolve(job["config"])
    if job.get("seed") is None:
        return spec
    tree = spec.model_dump(warnings=False)
    tree["train"]["seed"] = job["seed"]
    if not job.get("sibling"):
        tree["model"]["init_seed"] = job["seed"]
    return Spec.model_validate(tree)


def searched_config(config: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """A trial's sampled settings under their dotted names (Ray's OptunaSearch also adds the
    sampler's own names of alternatives, such as `optimizer.lr@adamw`)."""
    keys = spec.searched()
    return {k: v for k, v in config.items() if k in keys}
