"""The driver's Ray Tune callbacks: trial events to MLflow (`Tracker`) and to the terminal's
status lines; a full disk stops the search (resumable, as after Ctrl-C)."""

from __future__ import annotations

import functools
import importlib
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from ray import cloudpickle
from ray.tune import Callback

from search import stopping
from search.progress import SearchStatus, duration
from search.spec import Spec
from search.storage import disk_full
from search.tracking import Tracker
from search.trials import budget, job_spec, searched_config, values_text
from train_fn.errors import SegtuneError

logger = logging.getLogger(__name__)


def _guarded(method):
    """MLflow's sqlite store on a full disk: stop the search (resumable, as after Ctrl-C)
    instead of crashing Ray Tune's loop with sqlite's error, retried once per event."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            if not disk_full(err):
                raise
            stopping.stop_search("disk full")
    return wrapper


def _stop_if_disk_full(trial) -> None:
    """A trial that failed because the disk is full would fail again on every retry (and
    leave another truncated checkpoint copy): stop the search instead."""
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may itself be unwritten
        text = None
    if disk_full(text):
        stopping.stop_search("disk full")


def _trial_error(trial) -> BaseException | None:
    """The trial's own exception (not Ray's wrapper), from the error file Ray pickled: in
    its driver-side staging folder (the run folder gets it later, with the next sync)."""
    try:
        local = Path(trial.pickled_error_file or "")
        if local.is_file():
            error = cloudpickle.loads(local.read_bytes())
        else:
            error = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - unwritten or unreadable: the text file is still there
        return None
    return getattr(error, "cause", None) or error


def _error_text(trial) -> str:
    """The text of the trial's error file (staging folder first, as above), or ''."""
    try:
        local = Path(trial.error_file or "")
        return local.read_text() if local.is_file() else str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - unwritten or unreadable
        return ""


def error_line(trial) -> str:
    """`Type: first line of the message` of the trial's error, for one log line."""
    error = _trial_error(trial)
    if error is None:
        lines = [ln for ln in _error_text(trial).splitlines() if ln.strip()]
        return lines[-1][:500] if lines else "see its error file"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


# The last line of a trial's traceback when it raised one of segtune's own errors.
_OWN_ERROR = re.compile(r"^((?:train_fn|search)(?:\.\w+)+)\.(\w+): (.+)$", re.MULTILINE)


def user_error(trial) -> str | None:
    """The message of the trial's error when it is the user's to fix (a `SegtuneError` raised
    inside the trial: bad data), else None. From the pickled error, else the error file's
    text (Ray has not always written the pickle when it retries the trial)."""
    error = _trial_error(trial)
    if isinstance(error, SegtuneError):
        return str(error)
    for module, name, message in reversed(_OWN_ERROR.findall(_error_text(trial))):
        try:
            kind = getattr(sys.modules.get(module) or importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(kind, type) and issubclass(kind, SegtuneError):
            return message
    return None


def _stop_if_user_error(trial) -> bool:
    """A trial that failed for the user's reason would fail again on every retry and in every
    other trial: stop the search (resumable) with the cause as the reason."""
    message = user_error(trial)
    if message is None:
        return False
    stopping.stop_search(f"{stopping.USER_ERROR}trial {trial.trial_id}: {message}")
    return True


class MlflowCallback(Callback):
    """Feeds trial events from Ray to the `Tracker` (driver side, batched)."""

    def __init__(self, tracker: Tracker, base: Spec):
        self.tracker = tracker
        self.base = base
        self.epochs = budget(base)
        self.last_epoch: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.stop_reason: dict[str, str] = {}
        self.largest_checkpoint = 0
        s = base.search
        self.status = SearchStatus(s.metric, s.num_trials,
                                   s.reduction_factor if s.scheduler == "asha" else None,
                                   budget=self.epochs)

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.status.restart_clock()
        self.status.total = total_num_samples or self.status.total

    def _status(self, trials, starting=None, ending=None) -> None:
        # Ray calls back before it changes the trial's status.
        running = [t.trial_id for t in trials or [] if t is not ending and (
            t is starting or getattr(t, "status", "") == "RUNNING")]
        done = sum(1 for t in trials or [] if t is ending or (
            t is not starting and getattr(t, "status", "") in ("TERMINATED", "ERROR")))
        # Ray creates a trial only when the searcher proposes it: those not proposed yet are
        # pending too.
        pending = max(self.status.total - len(running) - done, 0)
        logger.info("%s", self.status.line(running, pending))

    def on_step_end(self, iteration, trials, **info):
        if self.status.due() and any(getattr(t, "status", "") == "RUNNING" for t in trials):
            self._status(trials)

    @_guarded
    def on_trial_start(self, iteration, trials, trial, **info):
        config = searched_config(trial.config, self.base)
        flat = self.base.resolve(config).flat()
        self.tracker.start_trial(trial.trial_id, flat, config)
        self.status.started(trial.trial_id, config)
        logger.info("trial %s started: %s", trial.trial_id, values_text(config))
        self._status(trials, starting=trial)

    @_guarded
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last_epoch[trial.trial_id] = int(result.get("epoch", 0))
        if result.get("stop_reason"):
            self.stop_reason[trial.trial_id] = result["stop_reason"]
        self.tracker.log_result(trial.trial_id, result, latest=self.base.cv.every,
                                 budget=self.epochs)
        self.status.result(trial.trial_id, int(result.get("epoch", 0)),
                           result.get(self.base.search.metric), result.get("time_this_iter_s"))
        self._check_space(trial)
        if "loss" not in result:  # a job's final scores (`final/*`): no epoch to report
            return
        logger.info(
            "trial %s epoch %d/%d: loss %.3f, val_dice %.3f (%s)", trial.trial_id,
            result.get("epoch", 0), self.epochs, result.get("loss", float("nan")),
            result.get("val_dice", float("nan")),
            duration(result.get("time_this_iter_s") or 0),
        )

    def _check_space(self, trial) -> None:
        """Stop the search (resumable, as after Ctrl-C) while the run folder's disk still has
        room for what a stop writes: a disk that fills up cuts Ray's experiment state short,
        and a resume then starts over. Room kept: 1 MiB plus three of the largest checkpoint
        so far per concurrent trial."""
        try:
            for path in Path(trial.path).glob("checkpoint_*/checkpoint.pt"):
                self.largest_checkpoint = max(self.largest_checkpoint, path.stat().st_size)
            free = shutil.disk_usage(self.tracker.run_dir).free
        except (OSError, TypeError):  # an object store, or a folder not made yet
            return
        need = 2**20 + 3 * self.largest_checkpoint * self.base.search.max_concurrent
        if free < need:
            logger.warning("only %.1f MiB free in %s; the next checkpoints need about %.1f MiB: "
                           "stopping the search", free / 2**20, self.tracker.run_dir,
                           need / 2**20)
            stopping.stop_search("disk full")

    @_guarded
    def on_trial_complete(self, iteration, trials, trial, **info):
        # A trial restored at its last epoch reports nothing in this session: Ray's saved
        # result tells how far it got.
        epoch = self.last_epoch.get(trial.trial_id) or int(
            (getattr(trial, "last_result", None) or {}).get("epoch", 0))
        done = epoch >= self.epochs
        note = self.stop_reason.get(trial.trial_id) or ("completed" if done else "stopped early")
        self.tracker.end_trial(trial.trial_id, "FINISHED", note=note)
        self.status.end(trial.trial_id, "completed" if done else "stopped")
        took = duration(self.status.trial_seconds(trial.trial_id))
        if note == "stopped early":
            logger.info("%s (%s)", self.status.stopped_line(trial.trial_id, epoch, self.epochs),
                        took)
        else:
            logger.info("trial %s %s after epoch %d/%d (%s)", trial.trial_id, note, epoch,
                        self.epochs, took)
        self._status(trials, ending=trial)

    @_guarded
    def on_trial_error(self, iteration, trials, trial, **info):
        _stop_if_disk_full(trial)
        if not _stop_if_user_error(trial):  # Ray's traceback is in the trial's error file
            logger.warning("trial %s failed: %s (details: %s)", trial.trial_id,
                           error_line(trial), getattr(trial, "error_file", None))
        self.tracker.end_trial(trial.trial_id, "FAILED", note="error")
        self.status.end(trial.trial_id, "errored")
        self._status(trials, ending=trial)

    @_guarded
    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Ray retries from its last checkpoint: same MLflow run."""
        _stop_if_disk_full(trial)
        if _stop_if_user_error(trial):
            return
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self.tracker.note_retry(trial.trial_id, self.retries[trial.trial_id])
        logger.warning("trial %s failed (%s); retry %d from its last checkpoint",
                       trial.trial_id, error_line(trial), self.retries[trial.trial_id])

    @_guarded
    def on_experiment_end(self, trials, **info):
        # Only runs that no trial event closed: stopped from outside, or by a full disk.
        self.tracker.close_trials("FAILED" if stopping.stop_reason() == "disk full" else "KILLED")


class JobCallback(MlflowCallback):
    """MLflow runs of retrain jobs (`repeat`, `crossval`): one nested run per job under the
    search's parent, named and tagged by the job."""

    def __init__(self, tracker: Tracker, base: Spec, jobs: dict[str, dict[str, Any]],
                 kind: str):
        super().__init__(tracker, base)
        self.jobs, self.kind = jobs, kind
        self.status = SearchStatus(base.search.metric, len(jobs))

    @_guarded
    def on_trial_start(self, iteration, trials, trial, **info):
        name = trial.config["job"]
        job = self.jobs[name]
        self.tracker.start_trial(
            trial.trial_id, job_spec(self.base, job).flat(), job["config"],
            run_name=f"{self.tracker.run_name}/{self.kind}/{name}",
            tags={"segtune.kind": self.kind, "segtune.job": name,
                  "segtune.source_trial": job["trial"]})
        self.status.started(trial.trial_id, {"job": name})
        logger.info("%s job %s started (trial %s)", self.kind, name, trial.trial_id)
        self._status(trials, starting=trial)

    @_guarded
    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.end_trial(trial.trial_id, "FINISHED", note="completed")
        self.status.end(trial.trial_id, "completed")
        self._status(trials, ending=trial)
