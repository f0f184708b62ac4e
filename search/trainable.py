"""What runs inside a Ray worker: a search's trial (`trainable`) and a retrain job
(`job_trainable`), both `train_fn.loop.train` with a checkpoint and a result per epoch.

Imports no driver module (no MLflow, no Tuner, no results): the driver hands these functions
to Ray (`search.tuner`), and a worker imports only this, `search.spec`, `search.trials` and
`train_fn`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import tempfile
from typing import Any

from ray import tune
from ray._private.ray_constants import LOG_PREFIX_ACTOR_NAME, LOG_PREFIX_TASK_NAME

from search.spec import Spec
from search.trials import fork_epoch, job_spec, values_text
from train_fn.checkpoint import load_checkpoint, save_checkpoint
from train_fn.data import load_volumes
from train_fn.datasets import fold_splits, open_dataset
from train_fn.loop import pick_device, train
from train_fn.metrics import evaluate
from train_fn.models import build_model

logger = logging.getLogger(__name__)


def trainable(config: dict[str, Any], base: Spec, split: dict[str, list[str]],
              data_root: str, trunk: dict[str, Any] | None = None) -> None:
    """One trial: resolve the spec with the sampled `config`, then `run_trial` (from the
    shared `trunk`'s weights when the search has one)."""
    # Ray waits TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) for a finished trial's thread before it
    # hands this worker to the next trial (`reuse_actors`), and reads it then, in this
    # process. At load 30 on 2 cores the thread's end took longer: the next trial errored
    # ("Trainable runner reuse requires reset_config() ...") and, after two of them, the
    # demo search proposed no trial again and waited forever.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")
    name_worker_log(tune.get_context().get_trial_id(), config)
    spec = base.resolve(config)
    run_trial(spec, split, data_root, keep_fork=fork_epoch(spec), init=trunk)


def name_worker_log(trial_id: str, config: dict[str, Any]) -> None:
    """Mark the worker's log files (stdout and stderr) with the trial that runs now: a worker
    runs trial after trial (`reuse_actors`). Ray's log monitor takes a line that starts with
    `:actor_name:` as the name its forwarded lines carry (`(trial_ab12 pid=...)` on the
    driver's terminal), and one that starts with `:task_name:` as a note of the running
    task: both stay in the log, and neither is forwarded."""
    values = values_text(config, digits=4)
    for stream in (sys.stdout, sys.stderr):
        print(f"{LOG_PREFIX_ACTOR_NAME}trial_{trial_id}", file=stream)
        print(f"{LOG_PREFIX_TASK_NAME}trial {trial_id}: {values}", file=stream, flush=True)


def run_trial(spec: Spec, split: dict[str, list[str]], data_root: str,
              start: dict[str, Any] | None = None, keep_fork: int | None = None,
              init: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train inside a Ray trial: report every epoch with a checkpoint, and resume from the
    trial's last checkpoint after a retry or restore, else from `start` (a sibling's fork
    point). With `keep_fork`, that epoch's state rides along in every later checkpoint
    (`fork`), for sibling soups. Returns the last checkpoint state (None when the trial
    diverged)."""
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
    if resume is None:
        resume = start
    last = {"state": resume, "fork": (resume or {}).get("fork")}

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        last["state"] = state
        if state is None:  # the trial ends without a checkpoint (diverged)
            tune.report(metrics)
            return
        state["trial_id"] = trial_id
        if keep_fork is not None and metrics["epoch"] == keep_fork:
            last["fork"] = dict(state)  # before `fork` is added: no nesting
        if keep_fork is not None and last["fork"] is not None:
            state["fork"] = last["fork"]
        with tempfile.TemporaryDirectory(prefix="segtune-ckpt-") as folder:
            save_checkpoint(folder, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    spec = granted_device(spec)
    try:
        if spec.cv.every:
            return _run_folds(spec, split, data_root, resume, report)
        if resume is None or resume["epoch"] < spec.train.epochs:
            train(spec, split, data_root, report=report, resume=resume, init=init)
        return last["state"]
    finally:
        release_memory()


def release_memory() -> None:
    """Hand what the trial freed back to the OS: with `reuse_actors` the worker process runs
    the next trial, and glibc otherwise keeps a trial's freed heap (patches, validation
    volumes) as the process's own."""
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


def _run_folds(spec: Spec, split: dict[str, list[str]], data_root: str,
               resume: dict[str, Any] | None, report) -> dict[str, Any] | None:
    """`cv.mode: every`: train on each fold in turn and report after each fold the mean over
    the folds done (`epoch` counts folds), with a checkpoint holding the last fold's state and
    every finished fold's weights and scores. A retry redoes the unfinished fold."""
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




def job_trainable(config: dict[str, Any], base: Spec, jobs: dict[str, dict[str, Any]],
                  data_root: str, start: dict[str, Any] | None = None,
                  init: dict[str, Any] | None = None) -> None:
    """One job: train to the end (from `start`, a sibling's fork point, when given, else from
    the run's trunk `init`), then score the final weights on the job's validation and test
    cases (reported once more, under `final/`)."""
    job = jobs[config["job"]]
    name_worker_log(tune.get_context().get_trial_id(), {"job": config["job"]})
    spec = job_spec(base, job)
    state = run_trial(spec, job["split"], data_root, start=start, init=init)
    if state is None:  # diverged: nothing to score
        return
    ds = open_dataset(spec.data, data_root)
    model = build_model(spec.model, len(ds.channels), ds.num_classes)
    model.load_state_dict(state["model"])
    final: dict[str, float] = {}
    device = pick_device(spec.train.device)
    model.to(device)
    for part in ("val", "test"):
        vols = load_volumes(ds.subset(job["split"][part]), spec.data, ds.num_classes)
        mean, dice, hd = evaluate(model, vols, spec.train, device, ds.regions,
                                  bool(spec.train.val_hd95))
        final[f"final/{part}_dice"] = mean
        final.update({f"final/{part}_dice/{k}": v for k, v in dice.items()})
        final.update({f"final/{part}_hd95/{k}": v for k, v in hd.items()})
    tune.report({"epoch": spec.train.epochs, **final})
