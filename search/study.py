"""The Optuna study of a search, persisted in `<run dir>/optuna.db` (sqlite), named after the
run, so that `optuna-dashboard sqlite:///<run dir>/optuna.db` shows it during and after the
search, and `--resume` continues it.

Ray's `OptunaSearch` takes the storage but tells Optuna every trial that ended without an
error as COMPLETE with its last value, also one that ASHA stopped (Optuna refuses a value
told with PRUNED: it takes the last intermediate one itself). `StudySearch` keeps Optuna's meaning
of the states: COMPLETE ran its whole budget, PRUNED was stopped before it (by ASHA, the time
limit or a diverged loss), FAIL errored.

A trial's value, in the study as in `summary.json`, is its best epoch's metric: the epoch
whose checkpoint is kept, ranked and souped. Its intermediate value at epoch k is the best
up to k: what the trial is worth if stopped at k, which is also what Optuna records as a
PRUNED trial's value (the last intermediate one).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.errors import RunFolderError

logger = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"


def study_url(run_dir: str | Path) -> str:
    """The sqlite URL of a run's study (absolute, so the searcher Ray pickles finds it again
    from any working directory on `--resume`)."""
    return f"sqlite:///{(Path(run_dir) / STUDY_FILE).resolve()}"


def load_study(run_dir: str | Path, name: str):
    """The persisted study of the run in `run_dir` named `name` (read only by convention)."""
    return optuna.load_study(study_name=name, storage=study_url(run_dir))


def check_study(run_dir: str | Path, name: str, saved: set[str]) -> None:
    """Before a run resumes (before Ray starts): refuse, in one line, a study Ray's restore
    would fail on and then overwrite its own saved state with a new, empty experiment (seen:
    "Record does not exist", 15 minutes with no trial running, every later --resume lost):
    a missing `optuna.db` where Ray saved trials, a file that is no Optuna study, a study of
    another name, or one without the trials Ray saved (another run's). `saved`: the Ray
    trial ids of the run's saved experiment state."""
    path = Path(run_dir) / STUDY_FILE
    keep = ("; the run's checkpoints stay usable (soup, evaluate, predict): put its own "
            f"{STUDY_FILE} back, or start the search again under another --name")
    if not path.is_file():
        if saved:
            raise RunFolderError(f"{path}: missing, so the sampler cannot be given the "
                                 f"{len(saved)} trial(s) Ray saved{keep}")
        return
    try:
        trials = load_study(run_dir, name).get_trials(deepcopy=False)
    except KeyError:
        raise RunFolderError(f"{path}: holds no study named {name!r} (another run's "
                             f"study?){keep}") from None
    except Exception as err:  # noqa: BLE001 - sqlite and SQLAlchemy raise many kinds
        raise RunFolderError(f"{path}: not a readable Optuna study ({type(err).__name__})"
                             f"{keep}") from None
    missing = saved - {t.user_attrs.get("ray_trial_id") for t in trials}
    if missing:
        shown = ", ".join(sorted(missing)[:3]) + (" ..." if len(missing) > 3 else "")
        raise RunFolderError(f"{path}: the study does not hold {len(missing)} of the "
                             f"{len(saved)} trial(s) Ray saved ({shown}): another run's "
                             f"study{keep}")


class StudySearch(OptunaSearch):
    """Ray's `OptunaSearch` on an RDB study, telling Optuna COMPLETE / PRUNED / FAIL and each
    trial's best value (see the module docstring), in the study `study_name` at the RDB
    `url`. `budget` is a trial's length in the result's `epoch` (epochs, or folds with
    `cv.mode: every`)."""

    def __init__(self, space, metric: str, mode: str, sampler, url: str | None,
                 study_name: str, budget: int, history=(), best_first: int = 0):
        self._metric_name = metric  # before Ray's __init__, which sets the study up
        # url None: an in-memory study (a search without a run folder, as in the benchmarks).
        super().__init__(space, metric=metric, mode=mode, sampler=sampler,
                         study_name=study_name,
                         storage=optuna.storages.RDBStorage(url) if url else None)
        self._budget = budget
        if history:  # --warm-start: earlier runs' trials (search.warmstart)
            seed_study(self._ot_study, list(history), best_first)
        self._best: dict[str, float] = {}  # Ray trial id -> best metric so far
        self._step: dict[str, int] = {}  # Ray trial id -> last step reported to Optuna

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # optuna-dashboard labels the objective by it ("Objective 0" without).
        if self._ot_study is not None and not self._ot_study.metric_names:
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2, a line per run
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([self._metric_name])

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # the id summary.json and MLflow know the trial by
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self._best.get(trial_id)
            better = max if self._mode == "max" else min
            self._best[trial_id] = value if old is None else better(old, value)
        step = int(result.get("training_iteration", 0))
        # A NaN before any finite value is not reported; an epoch redone after a retry
        # or resume is not reported twice (Optuna would ignore it with a warning).
        if trial_id in self._best and step > self._step.get(trial_id, 0):
            self._step[trial_id] = step
            super().on_trial_result(trial_id, {**result, self.metric: self._best[trial_id]})

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        # Why PRUNED is read off the epoch reached: Ray tells the searcher the same way
        # whether ASHA, the time limit or the trial itself ended it (no reason is passed),
        # and a driver Callback sees no more than that, in a separate object with its own
        # event order. How far the trial got is the one fact all these cases share; it
        # comes with the result Ray hands over here (also after a restore), and it is what
        # summary.json's status is built from, so the two always agree.
        epoch = int((result or {}).get("epoch", 0))
        if result:
            # Ray gives the searcher a trial's last result only here, not to
            # on_trial_result (the one the scheduler stopped it on, or its final epoch).
            self.on_trial_result(trial_id, result)
        best = self._best.get(trial_id)
        if error:
            state, value = TrialState.FAIL, None
        elif epoch >= self._budget and best is not None:
            state, value = TrialState.COMPLETE, best
        else:  # Optuna takes the last intermediate value: the best so far
            state, value = TrialState.PRUNED, None
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        except Exception as err:  # noqa: BLE001 - a study write must not stop the search
            logger.warning("Optuna study: could not record trial %s as %s: %s", trial_id,
                           state.name, err)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved searcher (its study points at the same sqlite file), squared with the
        trials already in the study:
        - a trial asked after Ray's last save of its state will never run (Ray does not
          know it): marked FAIL, so that none stays RUNNING forever;
        - a trial that errored (FAIL) is resumed by Ray (`resume_errored`), and Optuna
          cannot reopen a finished trial: a new Optuna trial with the same settings and
          the epochs reported so far takes over its Ray trial id; the FAIL stays, as the
          record of the attempt that failed (segtune's `restore_tuner` always resumes
          errored trials)."""
        super().restore(checkpoint_path)
        trials = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        known = {t.number for t in self._ot_trials.values()}
        for number, trial in trials.items():
            if trial.state == TrialState.RUNNING and number not in known:
                logger.warning("Optuna study: trial %d was never started by Ray (the search "
                               "stopped just after asking it); marked FAIL", number)
                self._ot_study.tell(number, state=TrialState.FAIL)
        for trial_id, ot_trial in list(self._ot_trials.items()):
            old = trials.get(ot_trial.number)
            if old is None or old.state != TrialState.FAIL or not callable(self._space):
                continue
            self._ot_study.enqueue_trial(old.params)
            del self._ot_trials[trial_id]
            self._completed_trials.discard(trial_id)
            self.suggest(trial_id)  # asks the enqueued settings
            for step, value in sorted(old.intermediate_values.items()):
                self._ot_trials[trial_id].report(value, step)
            logger.info("Optuna study: trial %s resumes after an error as Optuna trial %d",
                        trial_id, self._ot_trials[trial_id].number)


def seed_study(study: optuna.Study, history: list[optuna.trial.FrozenTrial], best_first: int
               ) -> None:
    """Add `history` to `study`; with `best_first`, queue that many of its best COMPLETE
    configurations to be tried first (`--warm-start`, see `search.warmstart`)."""
    study.add_trials(history)
    complete = [t for t in history if t.state == optuna.trial.TrialState.COMPLETE]
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    for trial in sorted(complete, key=lambda t: -sign * t.value)[:best_first]:
        study.enqueue_trial(trial.params)
