"""What a trial or retrain job trains, as pure functions of the spec: its concrete spec and
its length. Shared by the driver (scheduler, callbacks, results) and the Ray workers
(`search.trainable`); imports neither Ray nor torch."""

from __future__ import annotations

from typing import Any

from search.spec import Spec


def budget(spec: Spec) -> int:
    """A trial's length in reports: epochs, or folds with `cv.mode: every`."""
    return spec.cv.folds if spec.cv.every else spec.train.epochs


def job_spec(base: Spec, job: dict[str, Any]) -> Spec:
    """The concrete spec of a job: the trial's configuration, and its seed for the patch
    order and the initial weights."""
    spec = base.resolve(job["config"])
    if job.get("seed") is None:
        return spec
    tree = spec.model_dump(warnings=False)
    tree["train"]["seed"] = job["seed"]
    tree["model"]["init_seed"] = job["seed"]
    return Spec.model_validate(tree)


def searched_config(config: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """A trial's sampled settings under their dotted names (Ray's OptunaSearch also adds the
    sampler's own names of alternatives, such as `optimizer.lr@adamw`)."""
    keys = spec.searched()
    return {k: v for k, v in config.items() if k in keys}
