"""`search.sampler: grid`: Optuna's GridSampler as Ray's OptunaSearch can drive it."""

from __future__ import annotations

import optuna


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, its points in a seeded shuffled order, without the `study.stop()` it
    calls once every point is taken: that raises outside `study.optimize`, and Ray asks and
    tells trials itself. `search.num_trials` (at most the grid size) ends the search instead.
    A module-level class, because Ray pickles the searcher with its experiment state."""

    def after_trial(self, study, trial, state, values) -> None:
        pass
