"""The search space: the spec's search leaves as an Optuna define-by-run function.

Pure functions of the spec, testable without Ray: Ray's `OptunaSearch` takes `define_by_run`
as its space and `make_sampler` as its sampler. Parameter names are the dotted spec keys, the
same strings as the Ray result columns and the MLflow params.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from search.spec import Spec, SpecError
from search.tracking import readable_range


def ordered_leaves(spec: Spec) -> list[tuple[str, str, Any]]:
    """(path, Optuna name, leaf) of every search leaf, in an order where every `when`
    condition refers to a setting sampled before it (spec order otherwise). A cycle of
    conditions is an error naming the settings."""
    pending = list(spec.search_leaves())
    order: list[tuple[str, str, Any]] = []
    while pending:
        waiting = {path for path, _, _ in pending}
        ready = [item for item in pending
                 if not any(dep in waiting for dep in (item[2].when or {}))]
        if not ready:
            names = ", ".join(dict.fromkeys(p for p, _, _ in pending))
            raise SpecError(f"the `when` conditions of {names} form a cycle")
        order += ready
        pending = [item for item in pending if item not in ready]
    return order


class DefineByRun:
    """`f(trial) -> {dotted key: value}` sampling every active leaf; leaves whose condition is
    off are not sampled (their `default` applies when the trial's spec is resolved). A class,
    not a closure, because Ray pickles the searcher with its experiment state."""

    def __init__(self, spec: Spec):
        self.leaves = ordered_leaves(spec)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for key, name, leaf in self.leaves:
            if key in chosen or not leaf.active(chosen):
                continue  # off, or another alternative of the same setting is on
            if leaf.type == "float":
                chosen[key] = trial.suggest_float(name, leaf.low, leaf.high, log=leaf.log,
                                                  step=leaf.step)
            elif leaf.type == "int":
                chosen[key] = trial.suggest_int(name, leaf.low, leaf.high, log=leaf.log,
                                                step=leaf.step)
            else:
                chosen[key] = trial.suggest_categorical(name, list(leaf.choices))
        return chosen


def define_by_run(spec: Spec) -> DefineByRun:
    """The spec's search space as an Optuna define-by-run function."""
    return DefineByRun(spec)


def centre(spec: Spec) -> dict[str, Any]:
    """The middle of the space: each active float/int leaf at the centre of its range (the
    geometric centre for log ranges, snapped to its step), each categorical at its first
    choice. Used where one representative configuration is needed (the LR range test)."""
    chosen: dict[str, Any] = {}
    for key, _, leaf in ordered_leaves(spec):
        if key in chosen or not leaf.active(chosen):
            continue
        if leaf.type == "categorical":
            chosen[key] = leaf.choices[0]
            continue
        mid = math.sqrt(leaf.low * leaf.high) if leaf.log else (leaf.low + leaf.high) / 2
        if leaf.step:
            mid = leaf.low + round((mid - leaf.low) / leaf.step) * leaf.step
        chosen[key] = int(round(mid)) if leaf.type == "int" else float(mid)
    return chosen


class GridSampler(optuna.samplers.GridSampler):
    """`search.sampler: grid`: Optuna's grid, its points in a seeded shuffled order, without
    the `study.stop()` it calls once every point is taken: that raises outside
    `study.optimize`, and Ray asks and tells trials itself. `search.num_trials` (at most the
    grid size) ends the search instead. A module-level class, because Ray pickles the searcher
    with its experiment state."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler of the spec (Ray's OptunaSearch ignores its own `seed` when a
    sampler is given, so the seed goes here)."""
    search = spec.search
    if search.sampler == "grid":
        return GridSampler(spec.grid(), seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    # TPE's startup trials are random; keep them a fraction of a small budget.
    startup = max(2, min(10, search.num_trials // 3))
    return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=startup)


def preview(spec: Spec, n: int, score=None) -> list[dict[str, Any]]:
    """The first `n` configurations the sampler proposes, without Ray. Each is told to the
    study with `score(config)` (default 0.0), as Ray would tell a trial's result."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    space = define_by_run(spec)
    configs = []
    for _ in range(n):
        trial = study.ask()
        config = space(trial)
        study.tell(trial, 0.0 if score is None else score(config))
        configs.append(config)
    return configs


def describe(spec: Spec) -> list[str]:
    """One line per search leaf, for `--dry-run`."""
    return [f"{key}: {readable_range(leaf)}" for _, key, leaf in ordered_leaves(spec)]
