"""A table of real learning curves (issue 27, part 1): a Sobol design over the searched space
of the `wide` setup of `bench/search_efficiency.py` plus the warmup (lr, beta1, weight decay,
warmup fraction), each configuration trained to its last epoch by segtune's own loop
(`train_fn.loop.train`, no Ray), with per epoch: validation Dice (mean and per region), the
seconds the epoch took (training and validation), and the test Dice of that epoch's weights.

The per-epoch cost is cut below the `wide` setup's so that 100+ configurations fit on 2 shared
cores: 10 phantom cases (6 train / 2 validation / 2 test), 12 epochs x 8 steps, sliding-window
validation without overlap; the model (UNet [8, 16, 32]), patches (2 x 32^3) and optimizer
(schedule-free AdamW) are the `wide` setup's.

One line of JSON per configuration is appended to `--out` as soon as it is trained (a stop
loses at most the configurations in progress; a rerun skips those done). `--workers`
processes train side by side, one thread each.

    python bench/curve_table.py --configs 128 --workers 2 --out bench/curve_table.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# The searched box: bench/search_efficiency.py's `wide` space plus the warmup fraction.
SPACE: dict[str, dict[str, Any]] = {
    "optimizer.lr": {"low": 3.0e-3, "high": 3.0e-2, "log": True},
    "optimizer.beta1": {"low": 0.8, "high": 0.95, "log": False},
    "optimizer.weight_decay": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "schedule.warmup_fraction": {"low": 0.0, "high": 0.25, "log": False},
}


def base_spec_text(epochs: int, steps: int) -> str:
    """The `wide` setup as a search spec (the space's leaves as Optuna leaves), so the replay
    builds segtune's searcher from the very spec the table was made with."""
    leaves = {k: f"{{type: float, low: {v['low']!r}, high: {v['high']!r}"
                 + (", log: true}" if v["log"] else "}") for k, v in SPACE.items()}
    return f"""
data: {{source: phantom, cases: 10, val_fraction: 0.2, test_fraction: 0.2}}
model: {{name: unet, channels: [8, 16, 32], strides: [2, 2], num_res_units: 1, init_seed: 0}}
optimizer:
  name: schedulefree_adamw
  lr: {leaves['optimizer.lr']}
  beta1: {leaves['optimizer.beta1']}
  weight_decay: {leaves['optimizer.weight_decay']}
schedule: {{warmup_fraction: {leaves['schedule.warmup_fraction']}}}
train: {{epochs: {epochs}, steps_per_epoch: {steps}, batch_size: 2,
         patch_size: [32, 32, 32], threads: 1, device: cpu, val_hd95: false,
         sw_overlap: 0.0, sw_batch_size: 12}}
search: {{sampler: tpe, scheduler: asha, grace_period: 4, reduction_factor: 2,
          num_trials: 36, max_concurrent: 2, max_failures: 0}}
resources: {{cpu: 1}}
soup: {{enabled: false}}
"""


def sobol_design(n: int, seed: int = 0) -> list[dict[str, float]]:
    """`n` points of a scrambled Sobol sequence mapped onto SPACE (log axes in log space)."""
    from scipy.stats import qmc

    unit = qmc.Sobol(d=len(SPACE), scramble=True, seed=seed).random(n)
    configs = []
    for row in unit:
        config = {}
        for u, (key, dim) in zip(row, SPACE.items(), strict=True):
            lo, hi = dim["low"], dim["high"]
            if dim["log"]:
                value = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            else:
                value = lo + u * (hi - lo)
            config[key] = float(f"{value:.6g}")
        configs.append(config)
    return configs


def train_one(job: tuple[int, dict[str, float], str, str]) -> dict[str, Any]:
    """Train one configuration with `train_fn.loop.train`; score every epoch's weights on the
    test patients inside the report callback (the weights are those validated)."""
    index, config, spec_path, data_root = job
    import torch

    from search.prepare import prepare_data
    from search.spec import load_spec
    from train_fn.data import load_volumes
    from train_fn.datasets import open_dataset
    from train_fn.loop import train
    from train_fn.metrics import evaluate
    from train_fn.models import build_model

    torch.set_num_threads(1)
    spec = load_spec(spec_path).resolve(config)
    _, split = prepare_data(spec)
    ds = open_dataset(spec.data, data_root)
    test_vols = load_volumes(ds.subset(split["test"]), spec.data, ds.num_classes)
    scorer = build_model(spec.model, len(ds.channels), ds.num_classes)
    epochs: list[dict[str, Any]] = []
    clock = {"t": time.perf_counter()}

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        now = time.perf_counter()
        row = {"epoch": metrics["epoch"], "seconds": round(now - clock["t"], 3),
               "val_dice": metrics["val_dice"],
               "val_dice_per_region": {k.split("/", 1)[1]: v for k, v in metrics.items()
                                       if k.startswith("val_dice/")},
               "loss": metrics["loss"]}
        if state is not None:
            scorer.load_state_dict(state["model"])
            mean, per, _ = evaluate(scorer, test_vols, spec.train, torch.device("cpu"),
                                    ds.regions, False)
            row["test_dice"], row["test_dice_per_region"] = mean, per
        else:
            row["test_dice"], row["test_dice_per_region"] = 0.0, {}
        epochs.append(row)
        clock["t"] = time.perf_counter()  # test scoring is not part of the epoch's cost

    t0 = time.perf_counter()
    train(spec, split, data_root, report=report)
    return {"index": index, "config": config, "epochs": epochs,
            "wall_s": round(time.perf_counter() - t0, 1)}


def done_indices(out: Path) -> set[int]:
    if not out.is_file():
        return set()
    return {json.loads(line)["index"] for line in out.read_text().splitlines() if line.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=128)
    parser.add_argument("--only", type=int, default=None, help="train the first N only")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "curve_table.jsonl"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    spec_path = out.with_suffix(".yaml")
    spec_path.write_text(base_spec_text(args.epochs, args.steps))

    from search.prepare import prepare_data
    from search.spec import load_spec

    design = sobol_design(args.configs)
    base = load_spec(spec_path)
    data_root, _ = prepare_data(base.resolve(design[0]))  # writes the phantom once
    done = done_indices(out)
    todo = [(i, c, str(spec_path), str(data_root)) for i, c in enumerate(design)
            if i not in done][: args.only]
    print(f"{len(done)} done, {len(todo)} to train", flush=True)
    t0 = time.time()
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=None) as pool:
        for row in pool.imap_unordered(train_one, todo):
            with out.open("a") as f:  # one whole line per configuration
                f.write(json.dumps(row) + "\n")
            last = row["epochs"][-1]
            print(f"{time.time() - t0:7.0f} s  config {row['index']:3d}  "
                  f"val {last['val_dice']:.3f}  test {last['test_dice']:.3f}  "
                  f"({row['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
