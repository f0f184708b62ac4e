"""Time from `python -m search run SPEC` to the first training step of the first trial, and
what it is spent on.

Runs the real CLI on spaces/smoke.yaml cut to one trial of one epoch (no LR test, no soup),
in a fresh phantom cache and a fresh local Ray instance (RAY_ADDRESS=local) each time, with
bench/startup_hook first on PYTHONPATH: its sitecustomize stamps events in the driver and in
every Ray worker (see there). The launch time is taken here just before the process starts.

    python bench/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).resolve().parent / "startup_hook"
OVERRIDES = ["search.num_trials=1", "search.max_concurrent=1", "train.epochs=1",
             "soup.enabled=false", "lr_finder.enabled=false"]


def one_run(tmp: Path) -> tuple[list[dict], int, float]:
    log = tmp / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT)]),
           "SEGTUNE_STARTUP_LOG": str(log), "SEGTUNE_CACHE": str(tmp / "cache"),
           "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    args = [sys.executable, "-m", "search", "run", "spaces/smoke.yaml", "--storage",
            str(tmp / "runs"), *[a for o in OVERRIDES for a in ("--set", o)]]
    launch = time.time()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed:\n{out[-3000:]}")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return events, proc.pid, launch


def phases(events: list[dict], driver: int, launch: float) -> dict[str, float]:
    """Seconds per phase, in the order they happen."""
    first: dict[tuple[int | None, str], float] = {}
    for e in events:
        first.setdefault((e["pid"], e["event"]), e["t"])
        first.setdefault((None, e["event"]), e["t"])
    trial = next(e["pid"] for e in events if e["event"] == "trial train() start")

    def d(event):
        return first[(driver, event)]

    def w(event):
        return first[(trial, event)]

    def span(pid, name):
        key = (pid, f"import {name} start")
        return first[(pid, f"import {name} end")] - first[key] if key in first else 0.0

    fit = d("Tuner.fit start")
    # The trial's worker may have been started by ray.init, before the search asked for it.
    ready = max(fit, w("python started"))
    rows = {
        "interpreter start (to sitecustomize)": d("python started") - launch,
        "CLI imports (search.cli, search.spec: pydantic, yaml, numpy)":
            d("cli main start") - d("python started"),
        "  of which numpy": span(driver, "numpy"),
        "  of which pydantic": span(driver, "pydantic"),
        "cli main to load_spec (imports: search.api, search.soup)":
            d("load_spec start") - d("cli main start"),
        "  of which torch (driver)": span(driver, "torch"),
        "load_spec": d("load_spec end") - d("load_spec start"),
        "from load_spec to prepare_data (imports: search.api, ray, mlflow)":
            d("prepare_data start") - d("load_spec end"),
        "  of which ray": span(driver, "ray"),
        "  of which mlflow": span(driver, "mlflow"),
        "prepare_data (phantom written, cases found, split)":
            d("prepare_data end") - d("prepare_data start"),
        "MLflow: Tracker() (sqlite store)":
            d("mlflow Tracker() end") - d("mlflow Tracker() start"),
        "MLflow: parent run": d("mlflow parent run end") - d("mlflow parent run start"),
        "from parent run to ray.init (run.json, import ray)":
            d("ray.init start") - d("mlflow parent run end"),
        "ray.init": d("ray.init end") - d("ray.init start"),
        "from ray.init to make_tuner (import search.tuner, ray.tune)":
            d("make_tuner start") - d("ray.init end"),
        "make_tuner (OptunaSearch, ASHA, Tuner)": d("make_tuner end") - d("make_tuner start"),
        "Tuner.fit to a worker process for the trial": ready - fit,
        "worker: to trial train() (unpickle: torch, ray.tune, search imports)":
            w("trial train() start") - ready,
        "  of which search.trainable (with all it imports)": span(trial, "search.trainable"),
        "  of which torch": span(trial, "torch"),
        "trial setup (volumes, monai imports, model, optimizer)":
            w("first step forward start") - w("trial train() start"),
        "  of which monai": span(trial, "monai"),
        "first step (forward, backward, clip)":
            w("first step clip end") - w("first step forward start"),
    }
    rows["total: launch to the end of the first step"] = w("first step clip end") - launch
    named = sum(v for k, v in rows.items() if not k.startswith(("  ", "total")))
    rows["unaccounted (between the stamps)"] = rows["total: launch to the end of the first step"] \
        - named
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            events, pid, launch = one_run(Path(tmp))
            runs.append(phases(events, pid, launch))
        print(f"repeat {rep}: {runs[-1]['total: launch to the end of the first step']:.1f} s",
              flush=True)
    print(f"\n`python -m search run spaces/smoke.yaml` ({', '.join(OVERRIDES)}), "
          f"{args.repeats} repeats, seconds:")
    print("| phase | median | min | max |")
    print("| --- | --- | --- | --- |")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} |")


if __name__ == "__main__":
    main()
