"""Importable entry points behind the CLI: run a search, soup a finished run."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import ray
from ray import tune

from search import stopping, warmstart
from search.callbacks import MlflowCallback
from search.errors import ArgumentError, RunFolderError, TrialError
from search.lazy import LazyModule
from search.plots import write_plots
from search.prepare import build_cache, check_device, check_resources, prepare_data
from search.runfolder import RunFolder, RunInfo
from search.runlock import run_lock
from search.siblings import run_siblings
from search.soup import finish
from search.spec import Spec, SpecError
from search.stopping import Interrupted
from search.storage import (
    DiskFullError,
    StorageError,
    check_local_folder,
    check_storage,
    disk_full,
    disk_full_error,
    experiment_location,
    is_uri,
    join,
    keep_experiment_state,
    newest_experiment_state,
    put_back_experiment_state,
    remove_cut_checkpoints,
    repair_experiment_state,
    saved_trial_ids,
    unfinished_trials,
)
from search.study import check_study, study_url
from search.summary import Summary
from search.tracking import (
    Tracker,
    check_tracking,
    default_uri,
    ui_command,
)
from search.trunk import ensure_trunk
from search.tuner import make_tuner, restore_tuner, trial_records
from train_fn.datasets import open_dataset, split_cases

# Import torch (see search.lazy): the LR range test and the retrain jobs of `cv.folds`.
lrfind = LazyModule("search.lrfind")
retrain = LazyModule("search.retrain")

logger = logging.getLogger(__name__)


MAX_NAME = 128  # the run folder, the Ray experiment and the MLflow experiment are named by it


def run_paths(spec_path: str | Path, name: str | None, storage: str | Path | None,
              local_dir: str | Path | None = None) -> tuple[str, Path, Path]:
    """(run name, local storage folder, run folder `<local storage>/<name>`). The local
    storage is `storage`, or `local_dir` (default `runs/`) when `storage` is an object-store
    URI, which then holds Ray's experiment only."""
    name = Path(spec_path).stem if name is None else name
    if (not name or "/" in name or name.startswith(".") or not name.isprintable()
            or len(name) > MAX_NAME):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ArgumentError(f"--name {shown}: a run name is one folder name (no '/', no "
                            f"leading '.', no line breaks or other control characters, at most "
                            f"{MAX_NAME} characters)")
    if is_uri(storage):
        local = Path(local_dir or "runs")
    elif local_dir is not None:
        raise ArgumentError(f"--local-dir {local_dir}: only with an object-store --storage "
                            "(s3://, gs://, ...); a local --storage holds the run folder itself")
    else:
        local = Path(storage or "runs")
    return name, local, local / name


def tracking_target(spec: Spec, storage: Path, name: str, uri: str | None) -> tuple[str, str]:
    """(tracking URI, experiment name): `--tracking-uri`, else the spec's, else sqlite at
    `<storage>/mlflow.db`; the experiment is the spec's or the run name."""
    return (uri or spec.tracking.uri or default_uri(storage),
            spec.tracking.experiment or name)


def _version() -> str:
    try:
        return version("segtune")
    except PackageNotFoundError:
        return "unknown"


def _plain(flat: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(flat, default=str))


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in list(dict.fromkeys([*old, *new])):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} in the run, {new.get(key)!r} now"
    return None


def run_search(spec: Spec, spec_path: str | Path, name: str | None = None,
               storage: str | Path | None = None, tracking_uri: str | None = None,
               ray_init: dict[str, Any] | None = None, resume: bool = False,
               local_dir: str | Path | None = None, overrides: list[str] = (),
               warm_start: list[str | Path] = (), warm_start_best: int = 0) -> Summary:
    """Run the search of `spec` and return its summary (also in `<run dir>/summary.json`).
    With `resume`, continue the interrupted run of the same name: finished trials are kept,
    unfinished and errored ones continue from their last checkpoint. An object-store
    `storage` (`s3://bucket/prefix`) holds Ray's experiment; the run folder is then
    `<local_dir or runs>/<name>`. The run folder is held by this process throughout (a
    second process with the same name is refused, see `search.runlock`). `overrides` (the
    `--set` items the spec was loaded with) go into the resume command it prints.
    `warm_start`: earlier run folders on the same task whose trials seed the study
    (`search.warmstart`), the `warm_start_best` best of them tried first."""
    if warm_start and resume:
        raise ArgumentError("--warm-start with --resume: the run's study already holds its "
                            "earlier trials; resume without --warm-start")
    if warm_start and spec.search.scheduler == "pbt":
        raise ArgumentError("--warm-start with search.scheduler pbt: PBT has no sampler to "
                            "seed with earlier trials; use search.scheduler asha")
    if warm_start_best < 0 or (warm_start_best and not warm_start):
        raise ArgumentError(f"--warm-start-best {warm_start_best}: a count >= 0, and only "
                            "with --warm-start")
    # Read before anything starts: a wrong folder or task fails at once.
    history = (warmstart.earlier_trials(spec, list(warm_start)), warm_start_best)
    with ExitStack() as held:
        return _search(spec, spec_path, name, storage, tracking_uri, ray_init, resume,
                       local_dir, held, list(overrides), history)


@dataclass
class Target:
    """Where a run goes and how it is continued: what a new run and a resume share."""

    spec_path: str | Path
    name: str
    local: Path  # the local storage folder
    run_dir: Path  # `<local>/<name>`
    uri: str | None  # the object store holding Ray's experiment, if any
    tracking_uri: str | None  # `--tracking-uri`
    ray_init: dict[str, Any]
    again: str  # the command that continues the run

    @property
    def location(self) -> str:
        """Ray's experiment of the run (in the run folder, or in the object store)."""
        return experiment_location(self.run_dir)


@dataclass
class Opened:
    """A run folder ready to search: what `_start` (a new run) or `_reopen` (a resume) made of
    it. The spec is the run's own (after the LR finder, or as saved)."""

    spec: Spec
    split: dict[str, list[str]]
    data_root: Path
    tracker: Tracker


def _search(spec: Spec, spec_path: str | Path, name: str | None, storage: str | Path | None,
            tracking_uri: str | None, ray_init: dict[str, Any] | None, resume: bool,
            local_dir: str | Path | None, held: ExitStack, overrides: list[str],
            history: tuple[list[Any], int] = ((), 0)) -> Summary:
    """Check where the run goes, then start it or resume it (under the run lock, in `held`)."""
    stopping.tune_env_defaults()
    uri = str(storage) if is_uri(storage) else None
    name, local, run_dir = run_paths(spec_path, name, storage, local_dir)
    if not ray.is_initialized():  # a cluster that is not there: said in seconds, first
        given = (ray_init or {}).get("address")
        stopping.check_address(given or os.environ.get("RAY_ADDRESS"),
                               "--address" if given else "RAY_ADDRESS")
    check_device(spec)
    check_local_folder(local, "--local-dir" if uri else "--storage")
    if uri:
        check_storage(uri)
    target = Target(spec_path, name, local, run_dir, uri, tracking_uri, ray_init or {},
                    resume_command(spec_path, name, uri, local, overrides,
                                   (ray_init or {}).get("address")))
    if resume and _unstarted(run_dir):  # killed before its first trial: start it
        logger.info("%s: no trial was saved before the run stopped; starting it", run_dir)
        resume = False
    if resume:
        return _resume_run(spec, target, held)
    return _new_run(spec, target, held, history)


def _new_run(spec: Spec, target: Target, held: ExitStack,
             history: tuple[list[Any], int]) -> Summary:
    """Check, lock and prepare a new run folder, then search (a failure before the first
    trial was saved removes what was written)."""
    run_dir = target.run_dir
    _check_new(run_dir, target.name, target.uri)
    # An unreachable server fails here, in seconds, before anything is written.
    check_tracking(tracking_target(spec, target.local, target.name, target.tracking_uri)[0],
                   "--tracking-uri" if target.tracking_uri
                   else f"{target.spec_path}: tracking.uri")
    # A wrong folder, layout or split fails at once, before Ray starts.
    split_cases([c.case_id for c in open_dataset(spec.data).cases],
                spec.data.val_fraction, spec.data.test_fraction, spec.data.split_seed)
    # Taken before anything is written into the run folder, and the folder checked again
    # under it: another process may have started this name since the check above.
    held.enter_context(run_lock(run_dir))
    _check_new(run_dir, target.name, target.uri, clear=True)
    _ensure_ray(target)
    check_resources(spec)
    existed = run_dir.exists()
    try:
        opened = _start(spec, target.spec_path, target.name, target.local, run_dir,
                        target.tracking_uri, target.uri)
    except BaseException:
        _discard(run_dir, existed)
        raise

    def fit(trunk: dict[str, Any] | None) -> Any:
        tuner = make_tuner(opened.spec, opened.split, str(opened.data_root), target.name,
                           target.uri or target.local, [MlflowCallback(opened.tracker,
                                                                       opened.spec)],
                           study=study_url(run_dir), trunk=trunk, history=history[0],
                           best_first=history[1])
        return stopping.tune_fit(tuner.fit)

    return _run(opened, target, fit, existed=existed)


def _resume_run(spec: Spec, target: Target, held: ExitStack) -> Summary:
    """Lock and reopen an interrupted run, then search on from its saved state."""
    if target.run_dir.is_dir():  # else nothing to resume (said by _reopen), nothing to create
        held.enter_context(run_lock(target.run_dir))
    opened = _reopen(spec, target.run_dir, target.tracking_uri)
    _ensure_ray(target)
    try:
        check_resources(opened.spec)
        build_cache(opened.spec, opened.data_root, opened.split)
    except BaseException:
        opened.tracker.close_all("FAILED")
        raise

    def fit(trunk: dict[str, Any] | None) -> Any:
        return _resume_fit(opened.spec, opened.split, str(opened.data_root), target.location,
                           trunk)

    return _run(opened, target, fit, existed=None)


def _ensure_ray(target: Target) -> None:
    """Start Ray (or join the cluster) unless it runs: before the data check and the cache
    build, which run as Ray tasks."""
    if ray.is_initialized():
        return
    context = stopping.start_ray(**{"job_name": f"segtune {target.name}", **target.ray_init})
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    logger.info("Ray: %d node(s), %s CPUs, %s GPUs", len(nodes),
                ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0))
    if getattr(context, "dashboard_url", None):
        token = ("" if os.environ.get("RAY_AUTH_MODE") == "disabled" else
                 "; it asks for the token `ray get-auth-token` prints")
        logger.info("Ray dashboard: http://%s (on a cluster: ssh -L 8265:%s <head>%s)",
                    context.dashboard_url, context.dashboard_url, token)


def _run(opened: Opened, target: Target, fit: Callable[[dict[str, Any] | None], Any],
         existed: bool | None) -> Summary:
    """The search of an opened run (new: `existed` says whether its folder was there before;
    resumed: None), then its summary, soups, cross-validation and plots. However it ends, its
    MLflow runs are closed with how it ended; what is kept is said in the error."""
    location, status = target.location, "FAILED"
    try:
        trunk = None
        if opened.spec.search.trunk_epochs:
            trunk = ensure_trunk(target.run_dir, opened.spec, opened.split,
                                 str(opened.data_root), opened.tracker)
        results = fit(trunk)
        if stopping.stop_reason() == "disk full" or any(disk_full(r.error) for r in results):
            raise _disk_full(target.run_dir, target.again)
        _raise_user_error(location, target.again)
        unfinished = unfinished_trials(location)
        if unfinished:
            status = "KILLED"
            raise Interrupted(f"search interrupted with {unfinished} trial(s) unfinished; "
                              f"continue it with: {target.again}")
        summary = _finish_run(opened, target, results)
        status = "FINISHED"
        return summary
    except BaseException as err:
        kept = existed is None or _restorable(location)
        if not kept:
            _discard(target.run_dir, bool(existed))
        instead = _failure(err, target, kept)
        if instead is None:
            raise
        if isinstance(instead, Interrupted):
            status = "KILLED"
            raise instead from err
        raise instead from None
    finally:
        _close(opened.tracker, status)


def _finish_run(opened: Opened, target: Target, results: Any) -> Summary:
    """summary.json of the finished trials, then the soups (or the siblings' and folds'),
    cross-validation and plots: the run's summary."""
    spec, run_dir = opened.spec, target.run_dir
    folder = RunFolder(run_dir)
    summary = Summary(name=target.name, metric=spec.search.metric, run_dir=str(run_dir),
                      trials=trial_records(results, target.location, spec))
    folder.write_summary(summary)
    if spec.soup.enabled and spec.soup.siblings and not spec.cv.every:
        summary.siblings = run_siblings(run_dir)
        folder.write_summary(summary)
    # With cv.mode every the trials' fold models are souped per fold instead: the run's
    # validation cases are in every fold's training data.
    summary = finish(run_dir, spec.soup.top_k, soup=spec.soup.enabled and not spec.cv.every,
                     tracker=opened.tracker)
    if spec.cv.folds:
        cv = (retrain.crossval_every(run_dir, spec.cv.top_k) if spec.cv.every else
              retrain.crossval(run_dir, spec.cv.folds, spec.cv.top_k))
        summary.crossval = {k: v for k, v in cv.items() if k != "jobs"}
        folder.write_summary(summary)
    if spec.tracking.plots:
        write_plots(run_dir, target.name, results, opened.tracker)  # warns, never raises
    return summary


def _failure(err: BaseException, target: Target, kept: bool) -> BaseException | None:
    """What to raise instead of `err` (None: `err` itself): a full disk, also when the error
    is a file it cut short (Ray's pickled trial error), or Ctrl-C, each said with whether
    the run can continue."""
    full = disk_full(err) or stopping.stop_reason() == "disk full"
    if full and not isinstance(err, DiskFullError):
        return _disk_full(target.run_dir, target.again if kept else None)
    if isinstance(err, KeyboardInterrupt):
        return Interrupted(
            f"search interrupted; the finished trials are kept: continue it with: "
            f"{target.again}" if kept else "search interrupted before its first trial was "
            "saved; nothing was kept: run it again")
    return None


def _close(tracker: Tracker, status: str) -> None:
    """Close the run's MLflow runs with `status`; a store with no space left is only said."""
    try:
        tracker.close_all(status)
    except Exception as err:
        if not disk_full(err):
            raise
        logger.warning("MLflow could not mark the runs %s (no space left for its store); "
                       "--resume closes them", status)


def resume_command(spec_path: str | Path, name: str, uri: str | None, local: Path,
                   overrides: list[str] = (), address: str | None = None) -> str:
    """The command that continues this run, ready to paste: its `--set` overrides (the
    resumed spec must be the same) and `--address` included, every part shell-quoted."""
    parts = ["python", "-m", "search", "run", str(spec_path), "--name", name]
    parts += ["--storage", uri, "--local-dir", str(local)] if uri else ["--storage", str(local)]
    for item in overrides:
        parts += ["--set", item]
    if address:
        parts += ["--address", address]
    return shlex.join([*parts, "--resume"])


class _RestoreWatch(logging.Filter):
    """Ray Tune's "Failed to restore the run state." (it then starts the experiment over and
    saves a new, empty state): noted, the search stopped at once, and its traceback kept
    for --debug."""

    def __init__(self) -> None:
        super().__init__()
        self.cause: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.cause is None and record.getMessage().startswith("Failed to restore the run"):
            error = record.exc_info[1] if record.exc_info else None
            text = str(error).strip().splitlines() if error is not None else []
            self.cause = f"{type(error).__name__}: {text[0] if text else ''}"[:300]
            stopping.stop_search("restore failed")
            return logger.isEnabledFor(logging.DEBUG)
        return True


def _resume_fit(spec: Spec, split: dict[str, list[str]], data_root: str, location: str,
                trunk: dict[str, Any] | None = None):
    """`Tuner.restore` and fit, with Ray's experiment state copied aside first: when the
    restore fails, or Ray starts the experiment over (none of the saved trials restored), the
    state is put back as it was and the run ends in one line."""
    saved = saved_trial_ids(location)
    backup = keep_experiment_state(location)
    watch, ray_log = _RestoreWatch(), logging.getLogger("ray.tune.execution.tune_controller")
    ray_log.addFilter(watch)
    tuner = None
    try:
        tuner = restore_tuner(spec, split, data_root, location, trunk)
        results = stopping.tune_fit(tuner.fit)
    except BaseException as err:  # noqa: BLE001 - raised below, unless the state goes back
        results = err
    finally:
        ray_log.removeFilter(watch)
    cause = watch.cause
    if tuner is None and isinstance(results, Exception):  # Tuner.restore itself failed
        cause = f"{type(results).__name__}: {(str(results).strip().splitlines() or [''])[0][:300]}"
    try:
        lost = bool(saved) and not saved & saved_trial_ids(location)
    except ValueError:  # cut short by the failed restore
        lost = True
    if backup is not None and (cause or lost):
        put_back_experiment_state(location, backup)
        raise StorageError(f"{location}: Ray could not restore the search ("
                           f"{cause or 'it started the experiment over'}); its saved state "
                           "is put back as it was: rerun with --debug for Ray's traceback")
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    if isinstance(results, BaseException):
        raise results
    return results


def _raise_user_error(location: str, again: str) -> None:
    """A trial stopped the search for a reason the user must fix (see search.callbacks):
    one line with the cause, and how to continue once it is fixed."""
    reason = stopping.stop_reason()
    if reason and reason.startswith(stopping.USER_ERROR):
        then = (f"; fix it, then continue the search with: {again}" if _restorable(location)
                else "; fix it and run again")
        raise TrialError(reason.removeprefix(stopping.USER_ERROR) + then)


def _disk_full(run_dir: Path, again: str | None) -> DiskFullError:
    for cut in remove_cut_checkpoints(run_dir):  # whole or absent; frees space for MLflow
        logger.warning("removed %s: a checkpoint copy the full disk cut short", cut)
    return disk_full_error(run_dir, again)


def _unstarted(run_dir: Path) -> bool:
    """Whether `run_dir` is what a new run leaves when killed (kill -9, a lost machine) before
    Ray Tune saved anything: segtune's start files (spec, split, run.json), no trial and no
    Ray state to resume from. Such a folder can only be started again."""
    folder = RunFolder(run_dir)
    if not run_dir.is_dir() or not (folder.spec_yaml.is_file() or folder.run_json.is_file()):
        return False
    if any(p.name.startswith("trial_") for p in run_dir.iterdir()):
        return False
    try:
        return not _restorable(experiment_location(run_dir))
    except Exception:  # noqa: BLE001 - an unreadable run.json: the folder is not ours to drop
        return False


def _clear_unstarted(run_dir: Path) -> None:
    """Close the MLflow parent run a killed start left RUNNING (KILLED), then remove the
    folder, with a line saying so (called under the run lock)."""
    folder = RunFolder(run_dir)
    try:
        if folder.run_json.is_file() and folder.info.parent_run_id:
            tracker = folder.tracker()
            tracker.client.set_terminated(folder.info.parent_run_id, "KILLED")
    except Exception as err:  # noqa: BLE001 - a store gone or offline: the folder still goes
        logger.warning("%s: could not mark its MLflow run KILLED (%s)", run_dir, err)
    shutil.rmtree(run_dir)
    logger.warning("%s: left by a run stopped before its first trial was saved (nothing to "
                   "resume); removed, and the run starts afresh", run_dir)


def _check_new(run_dir: Path, name: str, uri: str | None, clear: bool = False) -> None:
    if _unstarted(run_dir):
        if clear:
            _clear_unstarted(run_dir)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunFolderError(f"{run_dir}: a run named {name!r} already exists; continue it "
                             "with --resume, or pick another --name or --storage")
    if uri and newest_experiment_state(join(uri, name)) is not None:
        raise RunFolderError(f"{join(uri, name)}: a Ray experiment named {name!r} is "
                             "already in the store; pick another --name or --storage")


def _restorable(location: str | Path) -> bool:
    try:
        return tune.Tuner.can_restore(str(location))
    except Exception:  # noqa: BLE001 - an unreadable store: keep the folder, to be safe
        return True


def _discard(run_dir: Path, existed: bool) -> None:
    """Remove what a new run wrote before its first trial was saved: a folder with a spec and
    a split but no Ray Tune state can be neither resumed nor run again under its name."""
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        logger.info("removed %s: the run stopped before its first trial was saved", run_dir)
    if existed:
        run_dir.mkdir(parents=True, exist_ok=True)


def _start(spec: Spec, spec_path: str | Path, name: str, storage: Path, run_dir: Path,
           tracking_uri: str | None, storage_uri: str | None = None) -> Opened:
    """Prepare a new run folder: data, split, LR test, saved spec, MLflow parent run."""
    uri, experiment = tracking_target(spec, storage, name, tracking_uri)
    data_root, split = prepare_data(spec)
    build_cache(spec, data_root, split)
    run_dir.mkdir(parents=True, exist_ok=True)
    input_spec = _plain(spec.flat())
    finder = None
    if spec.lr_finder.enabled:
        spec, finder = lrfind.lr_find(spec, data_root, split, run_dir)
    folder = RunFolder(run_dir)
    folder.write_spec(spec)
    folder.write_split(split)
    # storage_uri: Ray's experiment (checkpoints) is at <storage_uri>/<name>
    info = RunInfo(name=name, home=str(run_dir.resolve()),
                   spec_file=str(Path(spec_path).resolve()),
                   data_root=str(Path(data_root).resolve()), split=split,
                   tracking_uri=uri, experiment=experiment, segtune=_version(),
                   started=time.strftime("%Y-%m-%dT%H:%M:%S"), input_spec=input_spec,
                   storage_uri=storage_uri or None)
    tracker = Tracker(uri, experiment, name, run_dir)
    info.parent_run_id = tracker.start_parent(
        spec.flat(), list(spec.searched()), tags={"segtune.spec_file": info.spec_file}
    )
    if finder is not None:
        tracker.log_parent({"lr_finder/suggestion": finder["suggestion"]},
                           [Path(finder["plot"]), run_dir / "lr_finder.json"])
    folder.write_info(info)
    logger.info("run folder %s; checkpoints in %s; MLflow %s (experiment %r)", run_dir,
                join(storage_uri, name) if storage_uri else run_dir, uri, experiment)
    _log_view(tracker)
    return Opened(spec, split, Path(data_root), tracker)


def _log_view(tracker: Tracker) -> None:
    command = ui_command(tracker.uri)
    logger.info("MLflow runs table: %s%s", f"{command}, then open " if command else "",
                tracker.view_url())


def _reopen(spec: Spec, run_dir: Path, tracking_uri: str | None = None) -> Opened:
    """Check that an interrupted run can continue with this spec; re-attach its MLflow run."""
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise RunFolderError(f"{run_dir}: nothing to resume (no run.json: the search never "
                             "started); run without --resume")
    diff = _first_difference(folder.info.input_spec, _plain(spec.flat()))
    if diff:
        raise SpecError(f"--resume {run_dir}: the spec differs from the run's ({diff}); a "
                        "search cannot change on resume: use another --name")
    location = experiment_location(run_dir)
    if repair_experiment_state(location):  # before anything reads the state
        logger.warning("%s: Ray's experiment state, lost by an earlier --resume that was "
                       "killed, is put back from the copy it kept", location)
    if not tune.Tuner.can_restore(location):
        raise RunFolderError(f"{location}: no Ray Tune state to resume from (stopped before "
                             "the first trial); delete the folder and run again")
    try:
        newest_experiment_state(location)
    except ValueError:  # Ray would start the search over and leave the old trials' runs
        raise StorageError(f"{location}: Ray's saved experiment state is cut short (the disk "
                           "filled up or the machine stopped while it was written), so the "
                           "search cannot continue; start it again under another --name") \
            from None
    if spec.search.scheduler != "pbt":  # PBT keeps no Optuna study (spec: the run's, checked)
        check_study(run_dir, folder.info.name, saved_trial_ids(location))
    if tracking_uri:
        folder.rehome(tracking_uri)
    check_tracking(folder.info.tracking_uri, f"{folder.run_json}: tracking_uri")
    tracker = folder.tracker(reopen=True)
    for trial_id in tracker.drop_unknown_trials(saved_trial_ids(location)):
        logger.info("deleted the MLflow run of trial %s: killed before Ray saved it (it has no "
                    "checkpoint; a new trial takes its place)", trial_id)
    logger.info("resuming %s; MLflow %s", run_dir, folder.info.tracking_uri)
    _log_view(tracker)
    return Opened(folder.spec, folder.split, Path(folder.data_root), tracker)


def soup_run(run_dir: str | Path, top_k: int | None = None) -> Summary:
    """Soup a finished run again (e.g. with another `top_k`); results go to its parent run."""
    folder = RunFolder(run_dir)
    info = folder.info  # not a run folder: one line, no run.json
    # The store may be gone or offline: the soup still runs.
    tracker = folder.tracker_or_none("soup results go to files only")
    summary = finish(run_dir, top_k, soup=True, tracker=tracker)
    if folder.spec.tracking.plots:
        write_plots(run_dir, info.name, None, tracker)  # the new greedy soup's steps
    return summary
