"""The Ray Tune run: Optuna proposes, ASHA stops early, each trial is `train_fn.loop.train`.

The only driver module that imports Ray (with `search.cli` for `ray.init`).
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback

from search import stopping
from search.progress import SearchStatus, values_text
from search.space import define_by_run, make_sampler
from search.spec import Spec
from search.storage import disk_full
from search.tracking import Tracker

logger = logging.getLogger(__name__)


def trainable(config: dict[str, Any], base: Spec, split: dict[str, list[str]],
              data_root: str) -> None:
    """One trial: resolve the spec with the sampled `config`, then `run_trial`."""
    run_trial(base.resolve(config), split, data_root)


def run_trial(spec: Spec, split: dict[str, list[str]], data_root: str
              ) -> dict[str, Any] | None:
    """Train inside a Ray trial: report every epoch with a checkpoint, and resume from the
    trial's last checkpoint after a retry or restore. Returns the last checkpoint state (None
    when the trial diverged)."""
    from train_fn.checkpoint import load_checkpoint, save_checkpoint
    from train_fn.loop import train

    # One "Checkpoint successfully created" line per epoch and trial is noise on the driver.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as folder:
                resume = load_checkpoint(folder)
        except Exception as err:  # noqa: BLE001 - truncated: a full disk during Ray's copy
            logger.warning("trial %s: its last checkpoint (%s) cannot be read (%s); the "
                           "trial starts again from its first epoch", trial_id,
                           checkpoint.path, str(err).splitlines()[0][:200])
    last = {"state": resume}

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        last["state"] = state
        if state is None:  # the trial ends without a checkpoint (diverged)
            tune.report(metrics)
            return
        state["trial_id"] = trial_id
        with tempfile.TemporaryDirectory(prefix="segtune-ckpt-") as folder:
            save_checkpoint(folder, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    spec = granted_device(spec)
    try:
        if spec.cv.every:
            return _run_folds(spec, split, data_root, resume, report)
        if resume is None or resume["epoch"] < spec.train.epochs:
            train(spec, split, data_root, report=report, resume=resume)
        return last["state"]
    finally:
        release_memory()


def release_memory() -> None:
    """Hand what the trial freed back to the OS: with `reuse_actors` the worker process runs
    the next trial, and glibc otherwise keeps a trial's freed heap (patches, validation
    volumes) as the process's own."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def granted_device(spec: Spec) -> Spec:
    """`train.device: auto` in a trial that asked Ray for no GPU means the CPU: Ray leaves
    CUDA_VISIBLE_DEVICES alone then, and every such trial would land, uncounted, on the first
    GPU."""
    if spec.train.device != "auto" or spec.resources.gpu:
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(update={"device": "cpu"})})


def budget(spec: Spec) -> int:
    """A trial's length in reports: epochs, or folds with `cv.mode: every`."""
    return spec.cv.folds if spec.cv.every else spec.train.epochs


def _run_folds(spec: Spec, split: dict[str, list[str]], data_root: str,
               resume: dict[str, Any] | None, report) -> dict[str, Any] | None:
    """`cv.mode: every`: train on each fold in turn and report after each fold the mean over
    the folds done (`epoch` counts folds), with a checkpoint holding the last fold's state and
    every finished fold's weights and scores. A retry redoes the unfinished fold."""
    from train_fn.datasets import fold_splits
    from train_fn.loop import train

    splits = fold_splits(split, spec.cv.folds, spec.data.split_seed)
    folds = list(resume["folds"]) if resume else []
    state = resume
    for k in range(len(folds), len(splits)):
        last: dict[str, Any] = {}
        train(spec, splits[k], data_root,
              report=lambda m, s, last=last: last.update(metrics=m, state=s))
        if last.get("state") is None:  # diverged on this fold: the trial ends here
            report({**last["metrics"], "epoch": k + 1}, None)
            return None
        folds.append({"model": last["state"]["model"], "metrics": last["metrics"]})
        metrics = fold_means([f["metrics"] for f in folds])
        metrics.update({f"fold{i}/val_dice": f["metrics"]["val_dice"]
                        for i, f in enumerate(folds)})
        state = {**last["state"], "epoch": k + 1, "folds": folds, "metrics": metrics}
        report({**metrics, "epoch": k + 1}, state)
    return state


def fold_means(per_fold: list[dict[str, Any]]) -> dict[str, float]:
    """The mean over folds of each validation score and of loss and gradient norm."""
    keys = [k for k in per_fold[0] if k.startswith(("val_dice", "val_hd95"))
            or k in ("loss", "grad_norm")]
    return {k: sum(m[k] for m in per_fold) / len(per_fold) for k in keys}


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
                                   s.reduction_factor if s.scheduler == "asha" else None)

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.status.restart_clock()
        self.status.total = total_num_samples or self.status.total

    def _status(self, trials, starting=None, ending=None) -> None:
        states = [getattr(t, "status", "") for t in trials or []]
        running, pending = states.count("RUNNING"), states.count("PENDING")
        # Ray calls back before it changes the trial's status.
        if starting is not None and getattr(starting, "status", "") == "PENDING":
            running, pending = running + 1, pending - 1
        if ending is not None and getattr(ending, "status", "") == "RUNNING":
            running -= 1
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
        self.tracker.log_result(trial.trial_id, result, latest=self.base.cv.every)
        self.status.result(trial.trial_id, int(result.get("epoch", 0)),
                           result.get(self.base.search.metric))
        self._check_space(trial)
        logger.info(
            "trial %s epoch %d/%d: loss %.3f, val_dice %.3f", trial.trial_id,
            result.get("epoch", 0), self.epochs, result.get("loss", float("nan")),
            result.get("val_dice", float("nan")),
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
        if note == "stopped early":
            logger.info("%s", self.status.stopped_line(trial.trial_id, epoch, self.epochs))
        else:
            logger.info("trial %s %s after epoch %d/%d", trial.trial_id, note, epoch,
                        self.epochs)
        self._status(trials, ending=trial)

    @_guarded
    def on_trial_error(self, iteration, trials, trial, **info):
        _stop_if_disk_full(trial)
        self.tracker.end_trial(trial.trial_id, "FAILED", note="error")
        self.status.end(trial.trial_id, "errored")
        self._status(trials, ending=trial)

    @_guarded
    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Ray retries from its last checkpoint: same MLflow run."""
        _stop_if_disk_full(trial)
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self.tracker.note_retry(trial.trial_id, self.retries[trial.trial_id])
        logger.warning("trial %s failed; retry %d from its last checkpoint", trial.trial_id,
                       self.retries[trial.trial_id])

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
        from search.retrain import job_spec

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


def restore_tuner(spec: Spec, split: dict[str, list[str]], data_root: str, location: str
                  ) -> tune.Tuner:
    """The interrupted search whose Ray experiment is at `location` (the run folder, or a
    URI in an object store), to continue: finished trials stay, unfinished and errored ones
    resume from their last checkpoint (errored ones count against `search.max_failures`
    again). Its MLflow callback comes back from Ray's saved state."""
    return tune.Tuner.restore(location, _trial_fn(spec, split, data_root),
                              resume_unfinished=True, resume_errored=True)


def _trial_fn(spec: Spec, split: dict[str, list[str]], data_root: str):
    """The trainable with the base spec, split and data folder bound, and its resources."""
    fn = tune.with_parameters(trainable, base=spec, split=split, data_root=data_root)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_scheduler(spec: Spec):
    """ASHA on epochs (rungs at grace_period * reduction_factor^k, the metric maximised), or
    FIFO: every trial runs its budget."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.search
    if s.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode="max",
                         max_t=budget(spec),
                         grace_period=1 if spec.cv.every else min(
                             s.grace_period, spec.train.epochs),
                         reduction_factor=s.reduction_factor)


def make_searcher(spec: Spec, study: str | None, name: str):
    """Optuna (the spec's seeded sampler) over `define_by_run(spec)`, the metric maximised,
    its study kept at the RDB URL `study` under `name` (None: in memory)."""
    from search.study import StudySearch

    return StudySearch(define_by_run(spec), metric=spec.search.metric, mode="max",
                       sampler=make_sampler(spec), url=study, study_name=name,
                       budget=budget(spec))


def make_tuner(spec: Spec, split: dict[str, list[str]], data_root: str, name: str,
               storage: str | Path, callbacks: list[Callback], study: str | None = None
               ) -> tune.Tuner:
    """The `Tuner` for a spec: OptunaSearch over `define_by_run(spec)` with the spec's seeded
    sampler, ASHA (or FIFO) on epochs, a concurrency limit and per-trial resources. `storage`
    is a local folder or an object-store URI (`s3://bucket/prefix`). `study` is the RDB URL
    where the Optuna study (named `name`) is kept (`search.study`; None: in memory)."""
    from search.storage import is_uri

    s = spec.search
    return tune.Tuner(
        _trial_fn(spec, split, data_root),
        tune_config=tune.TuneConfig(
            num_samples=s.num_trials,
            max_concurrent_trials=s.max_concurrent,
            # A trial that ends hands its worker process to the next one: no new process
            # start and no re-import of torch and MONAI per trial (~5 s each on 2 cores).
            reuse_actors=True,
            # metric and mode go to the searcher and the scheduler, not to TuneConfig: a
            # define-by-run OptunaSearch must have them when it is built.
            search_alg=make_searcher(spec, study, name),
            scheduler=make_scheduler(spec),
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name, callbacks=callbacks, verbose=0,
            storage_path=str(storage) if is_uri(storage) else str(Path(storage).resolve()),
            # With cv.mode every the last checkpoint holds every fold: keep the latest.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1) if spec.cv.every else
            tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=s.metric,
                                  checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            stop=({"time_total_s": s.trial_time_limit_s} if s.trial_time_limit_s else None),
        ),
    )


def searched_config(config: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """A trial's sampled settings under their dotted names (Ray's OptunaSearch also adds the
    sampler's own names of alternatives, such as `optimizer.lr@adamw`)."""
    keys = spec.searched()
    return {k: v for k, v in config.items() if k in keys}


def trial_records(results: tune.ResultGrid, location: str | Path, spec: Spec
                  ) -> list[dict[str, Any]]:
    """One record per trial: id, status, config, the best epoch's metrics and checkpoint
    (relative to the experiment `location`: the run folder or its object-store URI)."""
    from search.storage import relative

    epochs = budget(spec)
    records = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        best_path, best = None, None
        for checkpoint, ck_metrics in result.best_checkpoints or []:
            if best is None or ck_metrics.get("val_dice", -1) > best.get("val_dice", -1):
                best_path, best = checkpoint.path, ck_metrics
        if result.error is not None:
            status = "error"
        elif metrics.get("stop_reason"):
            status = "stopped: " + metrics["stop_reason"]
        elif (s := spec.search.trial_time_limit_s) and metrics.get("time_total_s", 0) >= s \
                and metrics.get("epoch", 0) < epochs:
            status = "stopped: time limit"
        elif metrics.get("epoch", 0) >= epochs:
            status = "completed"
        else:
            status = "stopped"
        best = best or {}
        records.append({
            "trial_id": trial_id,
            "status": status,
            "config": searched_config(result.config or {}, spec),
            "epochs": int(metrics.get("epoch", 0)),
            "val_dice": best.get("val_dice"),
            "val_dice_per_class": {k.split("/", 1)[1]: v for k, v in best.items()
                                   if k.startswith("val_dice/")},
            "val_hd95_per_class": {k.split("/", 1)[1]: v for k, v in best.items()
                                   if k.startswith("val_hd95/")},
            "best_epoch": best.get("epoch"),
            "checkpoint": relative(best_path, str(location)) if best_path else None,
            "error": _error_line(result.error),
        })
    records.sort(key=lambda r: -1 if r["val_dice"] is None else r["val_dice"], reverse=True)
    return records


def _error_line(error: BaseException | None) -> str | None:
    """The trial's own exception (`Type: message`), not Ray's wrapper around it."""
    if error is None:
        return None
    cause = getattr(error, "cause", None) or error.__cause__
    if cause is not None:
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    own = [line for line in lines if not line.startswith((" ", "Traceback", "ray::"))]
    return (own[-1] if own else lines[-1] if lines else type(error).__name__)[:500]
