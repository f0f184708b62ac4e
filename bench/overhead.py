"""Overhead of running a trial through Ray Tune + MLflow + checkpoints vs a plain call.

The same config and number of steps, run (a) as plain function calls of
`train_fn.loop.train` and (b) as Ray Tune trials through segtune's own `make_tuner`
(OptunaSearch, ASHA, a checkpoint every epoch, the MLflow callback logging every epoch into a
sqlite store). A search runs several trials, so (b) is one search of `--trials` trials, one at
a time, against as many plain calls in (a). Repeats alternate a/b; the report gives medians
and their ratio, per search and for the first (cold: process start, imports) trial alone.
Ray's start-up and MLflow's store creation happen once per search and are reported apart.

    python bench/overhead.py --repeats 3 --trials 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="spaces/novograd.yaml")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    from search.prepare import prepare_data
    from search.spec import load_spec
    from train_fn.loop import train

    # One fixed configuration; lr as a one-choice categorical so (b) goes through OptunaSearch.
    spec = load_spec(args.spec, [
        f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}",
        "train.threads=1", "train.device=cpu", f"search.num_trials={args.trials}",
        "search.max_concurrent=1", "search.scheduler=fifo",
        "optimizer.lr={type: categorical, choices: [0.1]}", "optimizer.beta1=0.93",
        "optimizer.beta2=0.99", "optimizer.weight_decay=3.0e-5", "layers.early_encoder=0.4",
        "layers.deep_encoder=0.9", "schedule.warmup_fraction=0.15",
    ])
    fixed = spec.resolve({"optimizer.lr": 0.1})
    data_root, split = prepare_data(spec)

    import ray

    from search.callbacks import MlflowCallback
    from search.tracking import Tracker
    from search.tuner import make_tuner

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, num_cpus=2)
    ray_start = time.perf_counter() - t0

    plain, tuned, plain_first, tuned_first = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench", "bench", tmp)
        tracker.start_parent(spec.flat(), list(spec.searched()))
        mlflow_start = time.perf_counter() - t0
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(args.trials):
                train(fixed, split, data_root)
                if i == 0:
                    plain_first.append(time.perf_counter() - t0)
            plain.append(time.perf_counter() - t0)

            tuner = make_tuner(spec, split, str(data_root), f"rep{rep}", Path(tmp),
                               [MlflowCallback(tracker, spec)])
            t0 = time.perf_counter()
            results = tuner.fit()
            tuned.append(time.perf_counter() - t0)
            assert not results.errors, results.errors
            # Trials run in creation order; the first starts cold. Its share is the search
            # minus the warm trials' own time.
            times = [r.metrics["time_total_s"] for r in results]
            tuned_first.append(tuned[-1] - sum(times[1:]))
            print(f"rep {rep}: plain {plain[-1]:.1f}s, ray+mlflow+ckpt {tuned[-1]:.1f}s",
                  flush=True)
        tracker.close_all("FINISHED")
    ray.shutdown()

    med = statistics.median
    a, b = med(plain), med(tuned)
    a1, b1 = med(plain_first), med(tuned_first)
    print(f"\n{args.trials} trials of {args.epochs} epochs x {args.steps} steps, "
          f"{args.repeats} repeats, medians:")
    print(f"  whole search: plain calls {a:6.1f} s, Ray Tune + MLflow {b:6.1f} s, "
          f"ratio {b / a:.3f}x")
    print(f"  first trial:  plain call  {a1:6.1f} s, Ray Tune + MLflow {b1:6.1f} s, "
          f"ratio {b1 / a1:.3f}x")
    print(f"  once per search: ray.init {ray_start:.1f} s, MLflow store + parent run "
          f"{mlflow_start:.1f} s")


if __name__ == "__main__":
    main()
