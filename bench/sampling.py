"""Patches cropped in the training thread against cropped ahead by background threads
(`train.sample_workers`): training steps per second, side by side in one run, on the cached
(memory-mapped) volumes of a real-size dataset, and the same losses for a seed either way.

Each repeat trains the same initial weights for `--steps` steps in each mode, in alternating
order; steps per second are medians over repeats. The first `--warmup` steps of each are not
timed.

    python bench/sampling.py --data /data/bench/data-n16 --cache /data/bench/cache-n16 \\
        --workers 0 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(model0, sampler, steps: int, warmup: int, batch: int, threads: int):
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = copy.deepcopy(model0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    losses, start = [], None
    for i, (image, label) in enumerate(sampler.epoch(0, steps + warmup, batch)):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(image), label)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return steps / (time.perf_counter() - start), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a SegTHOR-layout folder")
    parser.add_argument("--cache", type=Path, required=True, help="its data.cache_dir")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 48])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from search.spec import Spec
    from train_fn.data import PatchSampler, load_volumes
    from train_fn.datasets import open_dataset
    from train_fn.models import build_model

    spec = Spec.model_validate({
        "data": {"source": "segthor", "root": str(args.data), "spacing": [1.5, 1.5, 2.5],
                 "cache_dir": str(args.cache)},
        "model": {"name": "unet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                  "num_res_units": 1, "init_seed": 0}})
    ds = open_dataset(spec.data)
    vols = load_volumes(list(ds.cases[:args.cases]), spec.data, ds.num_classes)
    model0 = build_model(spec.model, 1, ds.num_classes)
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    losses: dict[int, list[float]] = {}
    crop = PatchSampler(vols, args.patch, 0, ds.num_classes)
    t = time.perf_counter()
    for step in range(20):
        crop.batch(1, step, args.batch)
    crop_s = (time.perf_counter() - t) / 20
    for r in range(args.repeats):
        order = args.workers if r % 2 == 0 else list(reversed(args.workers))
        for w in order:
            sampler = PatchSampler(vols, args.patch, 0, ds.num_classes, workers=w)
            rate, loss = run(model0, sampler, args.steps, args.warmup, args.batch, args.threads)
            rates[w].append(rate)
            losses.setdefault(w, loss)
            if loss != losses[w]:
                raise SystemExit(f"workers {w}: losses differ between repeats")
    base = statistics.median(rates[args.workers[0]])
    print(f"{args.cases} cases, patch {args.patch}, batch {args.batch}, {args.threads} torch "
          f"threads; cropping one batch alone: {crop_s * 1000:.0f} ms")
    for w in args.workers:
        med = statistics.median(rates[w])
        same = losses[w] == losses[args.workers[0]]
        print(f"sample_workers {w}: {med:.3f} steps/s (median of {args.repeats}; "
              f"{', '.join(f'{x:.3f}' for x in rates[w])}), {med / base:.2f}x workers "
              f"{args.workers[0]}; losses identical to workers {args.workers[0]}: {same}")


if __name__ == "__main__":
    main()
