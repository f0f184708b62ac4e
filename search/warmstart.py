"""Warm start (`python -m search run SPEC --warm-start RUN_DIR ...`): the finished and
pruned trials of earlier runs on the same task become the new study's history, so the sampler
starts from what they learned instead of from random start-up trials.

Same task: the same data, model and metric (`data.*`, the model's fixed settings and
`search.metric`); anything else is refused in one line naming the first difference. A trial
with a value outside the new search space (a range narrowed, a choice removed, a parameter no
longer searched) is skipped with a line naming it. Each earlier trial keeps its state
(COMPLETE or PRUNED), its value and its per-epoch intermediate values, so that Optuna's
pruners and TPE weigh it as they would their own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from search.errors import WarmStartError
from search.runfolder import RunFolder
from search.space import ordered_leaves
from search.spec import Spec
from search.study import load_study

logger = logging.getLogger(__name__)


def distributions(spec: Spec) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of every search leaf of `spec`, by its Optuna name."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for _, name, leaf in ordered_leaves(spec):
        if leaf.type == "float":
            out[name] = optuna.distributions.FloatDistribution(leaf.low, leaf.high, log=leaf.log,
                                                               step=leaf.step)
        elif leaf.type == "int":
            out[name] = optuna.distributions.IntDistribution(leaf.low, leaf.high, log=leaf.log,
                                                             step=leaf.step or 1)
        else:
            out[name] = optuna.distributions.CategoricalDistribution(list(leaf.choices))
    return out


def task_of(spec: Spec) -> dict[str, Any]:
    """What must match for earlier trials to mean the same here: data, fixed model settings
    and the metric."""
    searched = set(spec.searched())
    return {k: v for k, v in spec.flat().items()
            if (k.startswith(("data.", "model.")) and k not in searched)
            or k == "search.metric"}


def earlier_trials(spec: Spec, run_dirs: list[str | Path]) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE and PRUNED trials of the runs in `run_dirs`, as trials of `spec`'s space."""
    space, task = distributions(spec), task_of(spec)
    out = []
    for run_dir in run_dirs:
        folder = RunFolder(run_dir)
        if not folder.is_run():
            raise WarmStartError(f"--warm-start {run_dir}: not a segtune run folder")
        old_task = task_of(folder.spec)
        for key in dict.fromkeys([*old_task, *task]):
            if old_task.get(key) != task.get(key):
                raise WarmStartError(
                    f"--warm-start {run_dir}: a different task ({key} is "
                    f"{old_task.get(key)!r} there, {task.get(key)!r} here); a warm start needs "
                    "the same data, model and metric")
        study = load_study(folder.path, folder.info.name)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        kept = [t for t in study.get_trials(deepcopy=False, states=states)
                if _fits(t, space, run_dir)]
        out += [_as_new(t, space) for t in kept]
        logger.info("warm start: %d of %d earlier trials from %s", len(kept),
                    len(study.get_trials(deepcopy=False, states=states)), run_dir)
    return out


def _fits(trial: optuna.trial.FrozenTrial, space: dict[str, Any], run_dir) -> bool:
    for name, value in trial.params.items():
        dist = space.get(name)
        if dist is None:
            logger.warning("warm start: %s trial %d skipped: %s is not searched here", run_dir,
                           trial.number, name)
            return False
        if not dist._contains(dist.to_internal_repr(value)):
            logger.warning("warm start: %s trial %d skipped: %s = %r is outside this search's "
                           "range (%s)", run_dir, trial.number, name, value, _range(dist))
            return False
    return True


def _range(dist) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    return f"{dist.low} to {dist.high}"


def _as_new(trial: optuna.trial.FrozenTrial, space: dict[str, Any]
            ) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=trial.state, value=trial.value,
        params=dict(trial.params),
        distributions={name: space[name] for name in trial.params},
        intermediate_values=dict(trial.intermediate_values),
        user_attrs={**trial.user_attrs, "warm_start": True})
