"""The strategies raced on the table (issue 27, part 2), each driven through its own code:

- `SegtuneTpeAsha`: segtune's searcher and scheduler as `python -m search run` builds them
  (`search.tuner.make_searcher` / `make_scheduler` on the table's spec: Ray's ASHAScheduler,
  segtune's StudySearch over Optuna's TPESampler), fed as Ray's TuneController feeds them;
- `OptunaPruned`: Optuna's TPESampler with its HyperbandPruner or SuccessiveHalvingPruner,
  through ask / report / should_prune / tell (two trials in flight at a time, as two
  `study.optimize` workers on one storage would have);
- `SyneTune`: Syne Tune's own schedulers (BOHB: asynchronous successive halving with a KDE
  searcher; ASHA), through suggest / on_trial_result / on_trial_complete;
- `SmacHyperband`: SMAC3's MultiFidelityFacade (random forest + Hyperband) through ask / tell;
  a configuration asked at a budget of b epochs trains b epochs from scratch (SMAC neither
  keeps nor resumes checkpoints);
- `Dehb`: DEHB's differential evolution over Hyperband brackets through ask / tell, as SMAC;
- `FixedOrder`: a list of tabulated configurations, each to its end (the grid in a random
  order; random search).

Peers get segtune's first rung as their minimum resource (4 epochs) and keep their own
default reduction factors.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np

from bench.replay_core import CONTINUE, DONE, PAUSE, STOP, ReplayTrial, Table

MIN_RESOURCE = 4


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class FixedOrder:
    """Tabulated configurations `order`, in that order, each trained to its last epoch."""

    def __init__(self, table: Table, order: list[int]):
        self.table, self.order, self.n = table, list(order), 0

    def start(self):
        if self.n >= len(self.order):
            return DONE
        self.n += 1
        return ReplayTrial(self.n, self.order[self.n - 1], self.table)

    def result(self, trial, row):
        return CONTINUE

    def finished(self, trial, row):
        pass


class _RayTrial:
    """What Ray's schedulers read off a trial."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class SegtuneTpeAsha:
    """segtune's default: the table's spec, seeded, through `make_searcher` and
    `make_scheduler`; `num_trials` from the spec ends the search, as in a real one."""

    def __init__(self, table: Table, spec_path: str, seed: int, overrides: list[str] = (),
                 tpe: dict[str, Any] | None = None, plain_optuna: bool = False,
                 history: list | None = None):
        from search.spec import load_spec
        from search.tuner import make_scheduler, make_searcher

        np.random.seed(seed)  # ASHA draws its bracket with numpy's global generator
        self.spec = load_spec(spec_path, [f"search.seed={seed}", *overrides])
        if tpe is None and not plain_optuna:  # history: as `--warm-start` hands it over
            self.searcher = make_searcher(self.spec, None, f"replay-{seed}", history or ())
        else:  # a variant of segtune's default (bench/replay.py --variants)
            self.searcher = _variant_searcher(self.spec, seed, tpe or {}, plain_optuna)
        self.scheduler = make_scheduler(self.spec)
        self.table, self.n, self.trials = table, 0, {}

    def start(self):
        if self.n >= self.spec.search.num_trials:
            return DONE
        self.n += 1
        tid = f"t{self.n:04d}"
        config = _flat(self.searcher.suggest(tid))
        self.trials[tid] = _RayTrial(tid)
        self.scheduler.on_trial_add(None, self.trials[tid])
        return ReplayTrial(tid, self.table.nearest(config), self.table)

    def result(self, trial, row):
        ray_trial = self.trials[trial.key]
        result = {**row, "time_total_s": float(row["epoch"])}
        decision = self.scheduler.on_trial_result(None, ray_trial, result)
        if decision == "STOP":  # as TuneController.stop_trial: scheduler, then searcher
            self.scheduler.on_trial_complete(None, ray_trial, result)
            self.searcher.on_trial_complete(trial.key, result=result)
            return STOP
        self.searcher.on_trial_result(trial.key, result)
        return CONTINUE

    def finished(self, trial, row):  # ASHA stops at max_t itself; not reached
        self.result(trial, row)


def _variant_searcher(spec, seed: int, tpe: dict[str, Any], plain_optuna: bool):
    """`make_searcher` with another TPESampler (`tpe`: its keyword arguments over segtune's
    own start-up count), or Ray's plain OptunaSearch, which tells Optuna every trial that
    ASHA stopped as COMPLETE with its last value (segtune tells PRUNED with its best)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search.space import define_by_run, make_sampler
    from search.study import StudySearch
    from search.trials import budget

    kwargs = {"n_startup_trials": make_sampler(spec)._n_startup_trials, **tpe}
    sampler = optuna.samplers.TPESampler(seed=seed, **kwargs)
    if plain_optuna:
        return OptunaSearch(define_by_run(spec), metric=spec.search.metric, mode="max",
                            sampler=sampler)
    return StudySearch(define_by_run(spec), metric=spec.search.metric, mode="max",
                       sampler=sampler, url=None, study_name=f"variant-{seed}",
                       budget=budget(spec))


def warm_history(table: Table, spec_path: str, seed: int, workers: int, budget: int) -> list:
    """The COMPLETE and PRUNED trials of a whole replayed segtune search with `seed`, as
    `search.warmstart.earlier_trials` reads them from a run's study."""
    import optuna

    from bench.replay_core import simulate

    earlier = SegtuneTpeAsha(table, spec_path, seed)
    simulate(earlier, table, workers, budget)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return earlier.searcher._ot_study.get_trials(states=states)


class OptunaPruned:
    """Optuna's TPE (or GPSampler: a Gaussian process, fitted to the complete trials only)
    with a pruner; every reported epoch goes through `should_prune`."""

    def __init__(self, table: Table, seed: int, pruner: str, startup: int = 10,
                 sampler: str = "tpe"):
        import optuna

        from search.spec import load_spec  # noqa: F401 - the same Optuna as segtune

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if pruner == "hyperband":
            p = optuna.pruners.HyperbandPruner(min_resource=MIN_RESOURCE,
                                               max_resource=table.epochs)
        else:
            p = optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_RESOURCE)
        make = optuna.samplers.GPSampler if sampler == "gp" else optuna.samplers.TPESampler
        # A fixed name: HyperbandPruner puts a trial in a bracket by a hash of the study's name
        # (a random one by default), so the bracket draw repeats only under a fixed name.
        self.study = optuna.create_study(
            direction="maximize", pruner=p, study_name=f"replay-{pruner}-{sampler}-{seed}",
            sampler=make(seed=seed, n_startup_trials=startup))
        self.distributions = _optuna_space(table)
        self.table, self.best = table, {}

    def start(self):
        trial = self.study.ask(self.distributions)
        return ReplayTrial(trial, self.table.nearest(trial.params), self.table)

    def result(self, trial, row):
        ot = trial.key
        self.best[ot.number] = max(self.best.get(ot.number, 0.0), row["val_dice"])
        ot.report(row["val_dice"], row["epoch"])
        if ot.should_prune():
            import optuna

            self.study.tell(ot, state=optuna.trial.TrialState.PRUNED)
            return STOP
        return CONTINUE

    def finished(self, trial, row):
        self.study.tell(trial.key, self.best[trial.key.number])


def _optuna_space(table: Table) -> dict[str, Any]:
    import optuna

    return {k: optuna.distributions.FloatDistribution(d["low"], d["high"], log=d["log"])
            for k, d in table.space.items()}


class SyneTune:
    """A Syne Tune scheduler (`BOHB` or `ASHA` from `syne_tune.optimizer.baselines`)."""

    def __init__(self, table: Table, seed: int, name: str):
        from datetime import datetime

        from syne_tune import config_space as cs
        from syne_tune.optimizer import baselines

        logging.getLogger("syne_tune").setLevel(logging.WARNING)
        space = {k: (cs.loguniform if d["log"] else cs.uniform)(d["low"], d["high"])
                 for k, d in table.space.items()}
        self.scheduler = getattr(baselines, name)(
            space, metric="val_dice", time_attr="epoch", max_t=table.epochs,
            do_minimize=False, random_seed=seed, grace_period=MIN_RESOURCE)
        self.table, self.n, self.now = table, 0, datetime.now
        self.trials: dict[int, Any] = {}

    def start(self):
        from syne_tune.backend.trial_status import Trial

        suggestion = self.scheduler.suggest()
        if suggestion is None:
            return DONE
        config = suggestion.config
        trial = Trial(trial_id=self.n, config=config, creation_time=self.now())
        self.trials[self.n] = trial
        self.n += 1
        self.scheduler.on_trial_add(trial)
        return ReplayTrial(trial.trial_id, self.table.nearest(config), self.table)

    def result(self, trial, row):
        decision = self.scheduler.on_trial_result(self.trials[trial.key], row)
        if decision == "STOP":
            self.scheduler.on_trial_complete(self.trials[trial.key], row)
            return STOP
        return CONTINUE

    def finished(self, trial, row):
        self.scheduler.on_trial_complete(self.trials[trial.key], row)


def _config_space(table: Table, seed: int):
    """The table's box as a seeded ConfigSpace (what SMAC3 and DEHB sample)."""
    from ConfigSpace import ConfigurationSpace, Float

    cs = ConfigurationSpace(seed=seed)
    cs.add([Float(k, (d["low"], d["high"]), log=d["log"]) for k, d in table.space.items()])
    return cs


class SmacHyperband:
    """SMAC3's multi-fidelity facade: a random forest proposes, Hyperband (eta 3) assigns
    budgets in epochs, from MIN_RESOURCE to the table's last epoch."""

    def __init__(self, table: Table, seed: int, workdir: str):
        from smac import MultiFidelityFacade, Scenario

        logging.getLogger("smac").setLevel(logging.ERROR)
        cs = _config_space(table, seed)
        scenario = Scenario(cs, deterministic=True, n_trials=100_000, seed=seed,
                            min_budget=MIN_RESOURCE, max_budget=table.epochs,
                            output_directory=f"{workdir}/smac-{seed}")
        self.smac = MultiFidelityFacade(
            scenario, target_function=lambda config, seed=0, budget=0: 0.0,
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=3),
            overwrite=True, logging_level=False)
        self.table, self.info = table, {}

    def start(self):
        info = self.smac.ask()
        trial = ReplayTrial(len(self.info), self.table.nearest(dict(info.config)), self.table,
                            stop_at=int(round(info.budget)))
        self.info[trial.key] = info
        return trial

    def result(self, trial, row):
        return CONTINUE

    def finished(self, trial, row):
        from smac.runhistory.dataclasses import TrialValue

        best = float(self.table.val[trial.index, :trial.epoch].max())
        self.smac.tell(self.info[trial.key], TrialValue(cost=1.0 - best))


class Dehb:
    """DEHB (differential evolution + Hyperband, eta 3, fidelities MIN_RESOURCE to the table's
    last epoch) through ask / tell; like SMAC, a configuration asked at b epochs trains b
    epochs from scratch. DEHB 0.1.2 pins numpy < 2 but runs on numpy 2: installed with
    `pip install --no-deps dehb==0.1.2 loguru` (see bench/RESULTS.md)."""

    def __init__(self, table: Table, seed: int, workdir: str):
        from dehb import DEHB

        self.dehb = DEHB(cs=_config_space(table, seed), dimensions=len(table.space),
                         min_fidelity=MIN_RESOURCE,
                         max_fidelity=table.epochs, eta=3, n_workers=1, seed=seed,
                         output_path=f"{workdir}/dehb-{seed}", save_freq="end",
                         log_level="ERROR")
        self.table, self.jobs = table, {}

    def start(self):
        job = self.dehb.ask()
        trial = ReplayTrial(len(self.jobs), self.table.nearest(dict(job["config"])),
                            self.table, stop_at=int(round(job["fidelity"])))
        self.jobs[trial.key] = job
        return trial

    def result(self, trial, row):
        return CONTINUE

    def finished(self, trial, row):
        best = float(self.table.val[trial.index, :trial.epoch].max())
        self.dehb.tell(self.jobs[trial.key], {"fitness": 1.0 - best, "cost": trial.epoch})


class RayBohb:
    """Ray Tune's `TuneBOHB` + `HyperBandForBOHB` (synchronous brackets: trials PAUSE at a
    rung until the bracket's other trials get there), fed as Ray's TuneController feeds them:
    new trials are suggested while fewer than `max_pending` wait, the scheduler's
    `choose_trial_to_run` picks what a free worker runs, a paused trial resumes from its
    checkpoint, `stop_trial` mirrors the controller's. No `max_concurrent_trials` (Ray's
    ConcurrencyLimiter counts paused trials, which would shrink every bracket to 2 trials):
    the 2 workers alone limit how many run."""

    def __init__(self, table: Table, seed: int, max_pending: int = 16):
        from ray import tune
        from ray.tune.experiment import Trial
        from ray.tune.schedulers.hb_bohb import HyperBandForBOHB
        from ray.tune.search.bohb import TuneBOHB

        logging.getLogger("hpbandster").setLevel(logging.WARNING)
        self.names = {k.replace(".", "__"): k for k in table.space}
        space = {n: (tune.loguniform if table.space[k]["log"] else tune.uniform)(
            table.space[k]["low"], table.space[k]["high"]) for n, k in self.names.items()}
        # 16 candidates per proposal instead of hpbandster's 64: its truncated-normal draws
        # cost ~2 s a proposal on the shared cores (80 proposals a search, 20 seeds).
        self.searcher = TuneBOHB(space, metric="val_dice", mode="max", seed=seed,
                                 bohb_config={"num_samples": 16})
        self.scheduler = HyperBandForBOHB(time_attr="training_iteration", metric="val_dice",
                                          mode="max", max_t=table.epochs)
        self.status = Trial
        self.search_alg = type("SearchAlg", (), {"searcher": self.searcher})()
        self.table, self.max_pending, self.trials, self.n = table, max_pending, [], 0

    # The TuneController surface the scheduler calls.
    def get_trials(self):
        return self.trials

    def stop_trial(self, t) -> None:
        if t.status in (self.status.PENDING, self.status.PAUSED):
            self.scheduler.on_trial_remove(self, t)
            self.searcher.on_trial_complete(t.trial_id)
        elif t.status == self.status.RUNNING:
            self.scheduler.on_trial_complete(self, t, t.last_result)
            self.searcher.on_trial_complete(t.trial_id, result=t.last_result)
            t.killed = True  # running on the other worker: ends at its next epoch
        t.status = self.status.TERMINATED

    def start(self):
        pending = sum(t.status == self.status.PENDING for t in self.trials)
        while pending < self.max_pending and self.n < getattr(self, "max_trials", 10**9):
            self.n += 1
            tid = f"b{self.n:04d}"
            config = self.searcher.suggest(tid)
            if config is None:
                break
            config = {self.names[k]: v for k, v in _flat(config).items()}
            t = _BohbTrial(tid, ReplayTrial(tid, self.table.nearest(config), self.table),
                           self.status.PENDING)
            self.trials.append(t)
            self.scheduler.on_trial_add(self, t)
            pending += 1
        t = self.scheduler.choose_trial_to_run(self)
        if t is None:
            return None
        t.status = self.status.RUNNING
        return t.replay

    def result(self, trial, row):
        t = next(x for x in self.trials if x.trial_id == trial.key)
        if t.killed:
            return STOP
        result = {**row, "time_total_s": float(row["epoch"])}
        t.last_result = result
        decision = self.scheduler.on_trial_result(self, t, result)
        if decision == "STOP":
            self.stop_trial(t)
            t.killed = False
            return STOP
        self.searcher.on_trial_result(t.trial_id, result)
        if decision == "PAUSE":
            t.status = self.status.PAUSED
            return PAUSE
        return CONTINUE

    def finished(self, trial, row):
        t = next(x for x in self.trials if x.trial_id == trial.key)
        if t.status == self.status.RUNNING:
            self.stop_trial(t)


class SegtuneSyncHalving(RayBohb):
    """segtune's searcher (TPE over an Optuna study, `make_searcher`) with Ray's synchronous
    `HyperBandScheduler` (brackets wait at each rung, reduction factor 2, max_t the table's
    last epoch) instead of asynchronous ASHA, driven as `RayBohb`: the same spec's
    `num_trials` ends the search."""

    def __init__(self, table: Table, spec_path: str, seed: int, max_pending: int = 16):
        from ray.tune.experiment import Trial
        from ray.tune.schedulers import HyperBandScheduler

        from search.spec import load_spec
        from search.tuner import make_searcher

        np.random.seed(seed)
        self.spec = load_spec(spec_path, [f"search.seed={seed}"])
        self.searcher = make_searcher(self.spec, None, f"replay-sync-{seed}", ())
        self.scheduler = HyperBandScheduler(time_attr="training_iteration", metric="val_dice",
                                            mode="max", max_t=table.epochs,
                                            reduction_factor=2)
        self.names = {k: k for k in table.space}
        self.status = Trial
        self.search_alg = type("SearchAlg", (), {"searcher": self.searcher})()
        self.table, self.max_pending, self.trials, self.n = table, max_pending, [], 0
        self.max_trials = self.spec.search.num_trials


class _BohbTrial:
    """What Ray's HyperBand brackets read off a trial."""

    def __init__(self, trial_id: str, replay: ReplayTrial, status: str):
        self.trial_id, self.replay, self.status = trial_id, replay, status
        self.last_result: dict[str, Any] = {}
        self.is_saving, self.killed = False, False


def random_order(table: Table, indices: list[int], seed: int) -> list[int]:
    return random.Random(seed).sample(indices, len(indices))


