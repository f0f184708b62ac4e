"""The Ray Tune run: Optuna proposes, ASHA stops early, each trial is `train_fn.loop.train`.

The one place a `Tuner` is built, for a search (`make_tuner`, `restore_tuner`) and for the
retrain jobs of `repeat` and `crossval` (`make_job_tuner`); and the trials' records from its
results. The trainables themselves run in Ray's workers (`search.trainable`), the driver's
callbacks are in `search.callbacks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator
from ray.tune.stopper import Stopper
from ray.tune.trainable.function_trainable import wrap_function

from search.lazy import LazyModule
from search.space import define_by_run, make_sampler, ordered_leaves
from search.spec import Spec
from search.storage import is_uri, relative
from search.study import StudySearch
from search.summary import TrialRecord
from search.trials import budget, search_epochs, searched_config

# Imports torch: handed to Ray when a Tuner is built (see search.lazy).
worker = LazyModule("search.trainable")


def restore_tuner(spec: Spec, split: dict[str, list[str]], data_root: str, location: str,
                  trunk: dict[str, Any] | None = None) -> tune.Tuner:
    """The interrupted search whose Ray experiment is at `location` (the run folder, or a
    URI in an object store), to continue: finished trials stay, unfinished and errored ones
    resume from their last checkpoint (errored ones count against `search.max_failures`
    again). Its MLflow callback comes back from Ray's saved state."""
    return tune.Tuner.restore(location, _trial_fn(spec, split, data_root, trunk),
                              resume_unfinished=True, resume_errored=True)


def _trial_fn(spec: Spec, split: dict[str, list[str]], data_root: str,
              trunk: dict[str, Any] | None = None):
    """The trainable with the base spec, split, data folder and shared trunk bound, and its
    resources."""
    extra = {"trunk": trunk} if trunk is not None else {}
    return _with_resources(spec, tune.with_parameters(
        worker.trainable, base=spec, split=split, data_root=data_root, **extra),
        "SegtuneTrial")


def _trial_repr(self) -> str:
    return f"trial_{self.trial_id}"


def _with_resources(spec: Spec, fn, kind: str):
    """`fn` with its resources, as a trainable class named `kind` whose repr is its trial's
    name: Ray's dashboard lists each trial's actor by them (a plain function trainable is
    class `ImplicitFunc`, repr `trainable`, for every trial)."""
    fn = tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    return type(kind, (wrap_function(fn),), {"__repr__": _trial_repr})


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_scheduler(spec: Spec):
    """ASHA on epochs (rungs at grace_period * reduction_factor^k, the metric maximised), or
    FIFO: every trial runs its budget."""
    s = spec.search
    if s.scheduler == "pbt":
        return population_based(spec)
    if s.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode="max",
                         max_t=budget(spec),
                         grace_period=1 if spec.cv.every else min(
                             s.grace_period, spec.train.epochs),
                         reduction_factor=s.reduction_factor)


def population_based(spec: Spec) -> PopulationBasedTraining:
    """`search.scheduler: pbt`: Ray Tune's population-based training on epochs, the
    population (`search.num_trials`) in step. Every `search.pbt_interval` epochs a trial in
    the bottom quarter of the population copies the
    checkpoint of one in the top quarter (weights, optimizer state: its exploit) and goes on
    with that trial's values perturbed by x0.8 or x1.2 or, one time in four, drawn anew
    (explore), kept inside the spec's ranges."""
    domains = pbt_space(spec)
    return PopulationBasedTraining(
        time_attr="training_iteration", metric=spec.search.metric, mode="max",
        perturbation_interval=spec.search.pbt_interval, hyperparam_mutations=domains,
        custom_explore_fn=InRange(spec),
        # Generations: a member waits at each exploit step until the whole population is
        # there (with fewer CPUs than members, the others run meanwhile).
        synch=True)


def pbt_space(spec: Spec) -> dict[str, Any]:
    """The searched leaves as Ray Tune domains (PBT's initial draws and its resampling)."""
    domains: dict[str, Any] = {}
    for key, _, leaf in ordered_leaves(spec):
        if leaf.type == "categorical":
            domains[key] = tune.choice(list(leaf.choices))
        elif leaf.type == "int":
            domains[key] = (tune.lograndint if leaf.log else tune.randint)(
                leaf.low, leaf.high + 1)
        else:
            domains[key] = (tune.loguniform if leaf.log else tune.uniform)(leaf.low, leaf.high)
    return domains


class InRange:
    """PBT's explore multiplies a value by 0.8 or 1.2 with no bounds: bring each searched
    number back inside its leaf's range (beta1 0.95 x 1.2 is no momentum). A class, not a
    closure: Ray pickles the scheduler with its experiment state."""

    def __init__(self, spec: Spec):
        self.ranges = {key: (leaf.low, leaf.high, leaf.type == "int")
                       for key, _, leaf in ordered_leaves(spec) if leaf.type != "categorical"}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high, whole) in self.ranges.items():
            if key in config:
                value = min(high, max(low, config[key]))
                config[key] = int(round(value)) if whole else float(value)
        return config


def make_searcher(spec: Spec, study: str | None, name: str, history=(), best_first: int = 0):
    """Optuna (the spec's seeded sampler) over `define_by_run(spec)`, the metric maximised,
    its study kept at the RDB URL `study` under `name` (None: in memory), seeded with the
    earlier trials `history` (`--warm-start`; `best_first` of them queued first)."""
    return StudySearch(define_by_run(spec), metric=spec.search.metric, mode="max",
                       sampler=make_sampler(spec), url=study, study_name=name,
                       budget=budget(spec), history=history, best_first=best_first)


def make_tuner(spec: Spec, split: dict[str, list[str]], data_root: str, name: str,
               storage: str | Path, callbacks: list[Callback], study: str | None = None,
               trunk: dict[str, Any] | None = None, history=(), best_first: int = 0
               ) -> tune.Tuner:
    """The `Tuner` for a spec: OptunaSearch over `define_by_run(spec)` with the spec's seeded
    sampler, ASHA (or FIFO) on epochs, a concurrency limit and per-trial resources. `storage`
    is a local folder or an object-store URI (`s3://bucket/prefix`). `study` is the RDB URL
    where the Optuna study (named `name`) is kept (`search.study`; None: in memory)."""
    s = spec.search
    pbt = s.scheduler == "pbt"
    return _tuner(
        _trial_fn(spec, split, data_root, trunk), spec, name, storage, callbacks,
        param_space=pbt_space(spec) if pbt else None,
        tune_config=dict(
            num_samples=s.num_trials,
            # metric and mode go to the searcher and the scheduler, not to TuneConfig: a
            # define-by-run OptunaSearch must have them when it is built. PBT takes no
            # searcher: its initial population is drawn at random (seeded).
            search_alg=BasicVariantGenerator(random_state=s.seed) if pbt else
            make_searcher(spec, study, name, history, best_first),
            # PBT pauses trials at each exploit step: a reused worker must see the paused
            # trial's thread end within seconds or the trial was lost (seen on 2 busy cores).
            reuse_actors=not pbt,
            # PBT: the whole population exists from the start, so that the members take
            # turns epoch-block by epoch-block (the resources bound how many run at once); a
            # member held back by a concurrency limit would start after the others finished
            # and copy their last checkpoint at its first exploit step.
            **({"max_concurrent_trials": None} if pbt else {}),
            scheduler=make_scheduler(spec),
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=dict(
            # With cv.mode every the last checkpoint holds every fold: keep the latest.
            # PBT: a donor's checkpoint must outlive its next ones until a trial copies it.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1) if spec.cv.every else
            tune.CheckpointConfig(num_to_keep=4 if pbt else 1,
                                  checkpoint_score_attribute=s.metric,
                                  checkpoint_score_order="max"),
            stop=_stopper(spec)))


class EpochBudget(Stopper):
    """`search.budget_epochs`: the whole search stops once its trials have reported `epochs`
    epochs in all (each trial counted to the last epoch it reported); also each trial's time
    limit. Trials running then stop at once, their unfinished epoch unreported."""

    def __init__(self, epochs: int, time_limit_s: float | None = None):
        self.epochs, self.time_limit_s = epochs, time_limit_s
        self.trained: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.trained[trial_id] = max(self.trained.get(trial_id, 0),
                                     int(result.get("training_iteration", 0)))
        late = self.time_limit_s is not None and result.get("time_total_s", 0) >= \
            self.time_limit_s
        return late or self.stop_all()

    def stop_all(self) -> bool:
        return sum(self.trained.values()) >= self.epochs


def _stopper(spec: Spec):
    """What stops trials besides ASHA: the run's epoch budget and the per-trial time limit."""
    limit = spec.search.trial_time_limit_s
    left = search_epochs(spec)
    if left is not None:
        return EpochBudget(left, limit)
    return {"time_total_s": limit} if limit else None


def make_job_tuner(spec: Spec, jobs: dict[str, dict[str, Any]], data_root: str, name: str,
                   storage: str | Path, callbacks: list[Callback],
                   start: dict[str, Any] | None = None,
                   init: dict[str, Any] | None = None) -> tune.Tuner:
    """The `Tuner` of retrain jobs: a grid over the job names, each `job_trainable` trained
    to its end (no searcher, no scheduler), with the spec's concurrency, resources and
    retries; from the state `start` when given (siblings' fork point), else from the weights
    `init` when given (the run's shared trunk)."""
    extra = {k: v for k, v in (("start", start), ("init", init)) if v is not None}
    fn = _with_resources(spec, tune.with_parameters(
        worker.job_trainable, base=spec, jobs=jobs, data_root=data_root, **extra),
        "SegtuneJob")
    return _tuner(fn, spec, name, storage, callbacks, tune_config={},
                  run_config=dict(checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
                  param_space={"job": tune.grid_search(list(jobs))})


def _tuner(fn, spec: Spec, name: str, storage: str | Path, callbacks: list[Callback],
           tune_config: dict[str, Any], run_config: dict[str, Any],
           param_space: dict[str, Any] | None = None) -> tune.Tuner:
    """What every segtune Tuner shares: the concurrency limit, reused workers, the storage,
    the callbacks, the retries, and no Ray tables."""
    return tune.Tuner(
        fn, param_space=param_space,
        tune_config=tune.TuneConfig(**{
            "max_concurrent_trials": spec.search.max_concurrent,
            # A trial that ends hands its worker process to the next one: no new process
            # start and no re-import of torch and MONAI per trial (~5 s each on 2 cores).
            "reuse_actors": True, **tune_config}),
        run_config=tune.RunConfig(
            name=name, callbacks=callbacks, verbose=0,
            storage_path=str(storage) if is_uri(storage) else str(Path(storage).resolve()),
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            **run_config),
    )


def trial_records(results: tune.ResultGrid, location: str | Path, spec: Spec
                  ) -> list[TrialRecord]:
    """One record per trial: id, status, config, the best epoch's metrics and checkpoint
    (relative to the experiment `location`: the run folder or its object-store URI)."""
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
        records.append(TrialRecord(
            trial_id=trial_id,
            status=status,
            config=searched_config(result.config or {}, spec),
            epochs=int(metrics.get("epoch", 0)),
            val_dice=best.get("val_dice"),
            val_dice_per_class={k.split("/", 1)[1]: v for k, v in best.items()
                                if k.startswith("val_dice/")},
            val_hd95_per_class={k.split("/", 1)[1]: v for k, v in best.items()
                                if k.startswith("val_hd95/")},
            best_epoch=best.get("epoch"),
            # With train.average: the averaged weights in that checkpoint (a soup ingredient).
            avg_val_dice=best.get("avg/val_dice"),
            checkpoint=relative(best_path, str(location)) if best_path else None,
            error=_error_line(result.error),
        ))
    records.sort(key=lambda r: -1 if r.val_dice is None else r.val_dice, reverse=True)
    return records


def _error_line(error: BaseException | None) -> str | None:
    """The trial's own exception (`Type: message`), not Ray's wrapper around it."""
    if error is None:
        return None
    # Ray gives a string when a reused worker could not be reset for the trial.
    cause = getattr(error, "cause", None) or getattr(error, "__cause__", None)
    if cause is not None:
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    own = [line for line in lines if not line.startswith((" ", "Traceback", "ray::"))]
    return (own[-1] if own else lines[-1] if lines else type(error).__name__)[:500]
