"""Training steps per second: segtune's loop (`train_fn.loop.train`, no Ray) against a plain
hand-written MONAI/PyTorch loop with the same UNet, initial weights, patches, batch, AdamW,
warmup-cosine schedule, gradient clipping and precision.

The patches of every epoch are drawn once by segtune's PatchSampler and replayed to both loops
from device memory (`--data cached`: the loop alone), or cropped afresh on the CPU at every
step by that sampler in both (`--data live`: what a trial does today). Each loop's timed window
is one epoch's steps, from its first batch to the end-of-epoch host sync; validation and
checkpointing happen outside it (segtune's validation is stubbed out here). The first epoch is
warm-up (cuDNN autotuning, torch.compile) and not timed. Repeats alternate which loop goes
first; the report gives each loop's median steps/s and the ratio segtune / plain, and checks
that both reach the same per-epoch losses and final weights.

Needs torch, monai, numpy, nibabel, pydantic, pyyaml and optuna (the spec's search leaves); never
imports ray or mlflow, so it runs on a GPU machine with only the training stack installed.
`--data live --workers N` crops with N background threads (pinned batches on CUDA), as a
trial does:

    python bench/loop_speed.py --device cpu --repeats 5
    python bench/loop_speed.py --device cuda --precision bf16 --patch 96 96 96 --batch 4 \\
        --channels 16 32 64 128 256 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# As on a machine without them: any import of these fails (MONAI's optional imports skip them).
for _absent in ("ray", "mlflow"):
    sys.modules[_absent] = None  # type: ignore[assignment]


def make_spec(args):
    from search.spec import Spec

    return Spec.model_validate({
        "data": {"cases": 8},
        "model": {"name": "unet", "channels": args.channels, "strides": [2] * (
            len(args.channels) - 1), "num_res_units": 1, "init_seed": 0},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"warmup_fraction": 0.1},
        "train": {"epochs": args.epochs, "steps_per_epoch": args.steps,
                  "batch_size": args.batch, "patch_size": args.patch, "grad_clip": 1.0,
                  "device": args.device, "threads": args.threads,
                  "precision": args.precision, "compile": args.compile,
                  "sample_workers": args.workers},
    })


def draw_patches(spec, volumes, device, cached: bool):
    """Every epoch's batches, drawn once (cached: on the device), or a live sampler."""
    from train_fn.data import PatchSampler

    sampler = PatchSampler(volumes, spec.train.patch_size, spec.train.seed, num_classes=5,
                           workers=spec.train.sample_workers or 0, pin=device.type == "cuda")
    if not cached:
        return sampler
    return [[(x.to(device), y.to(device))
             for x, y in sampler.epoch(e, spec.train.steps_per_epoch, spec.train.batch_size)]
            for e in range(spec.train.epochs)]


class Replay:
    """Stands in for PatchSampler inside segtune's loop: the same batches, stamping when each
    epoch's first one is taken."""

    def __init__(self, batches, stamps):
        self.batches, self.stamps = batches, stamps

    def epoch(self, epoch, steps, batch_size):
        source = (self.batches[epoch] if isinstance(self.batches, list)
                  else self.batches.epoch(epoch, steps, batch_size))
        for i, batch in enumerate(source):
            if i == 0:
                self.stamps.append(["start", time.perf_counter()])
            yield batch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_segtune(spec, split, root, batches, device):
    """segtune's loop; returns (epoch times, per-epoch losses, final weights)."""
    import train_fn.loop as loop

    stamps = []

    def stub_evaluate(*args, **kwargs):
        sync(device)
        stamps.append(["end", time.perf_counter()])
        return 0.0, {}, {}

    saved = loop.PatchSampler, loop.evaluate
    loop.PatchSampler = lambda *args, **kwargs: Replay(batches, stamps)
    loop.evaluate = stub_evaluate
    reports = []
    try:
        loop.train(spec, split, root, report=lambda m, s: reports.append(s))
    finally:
        loop.PatchSampler, loop.evaluate = saved
    times = [end[1] - start[1] for start, end in zip(stamps[::2], stamps[1::2], strict=True)]
    return times, [s["metrics"]["loss"] for s in reports], reports[-1]["model"]


def run_plain(spec, batches, device):
    """The loop a user would write by hand for the same training."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.optimizers import WarmupCosineSchedule

    t = spec.train
    torch.set_num_threads(t.threads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.model.init_seed)
        model = UNet(spatial_dims=3, in_channels=1, out_channels=5,
                     channels=spec.model.channels, strides=spec.model.strides,
                     num_res_units=spec.model.num_res_units, dropout=0.0)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.optimizer.lr,
                                  weight_decay=spec.optimizer.weight_decay)
    total = t.epochs * t.steps_per_epoch
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=round(0.1 * total), t_total=total)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net = torch.compile(model) if t.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None

    times, losses = [], []
    model.train()
    for epoch in range(t.epochs):
        source = (batches[epoch] if isinstance(batches, list)
                  else batches.epoch(epoch, t.steps_per_epoch, t.batch_size))
        loss_sum = torch.zeros((), device=device)
        for i, (image, label) in enumerate(source):
            if i == 0:
                start = time.perf_counter()
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                loss = loss_fn(net(image), label)
            if scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            schedule.step()
            loss_sum += loss.detach()
        losses.append(float(loss_sum) / t.steps_per_epoch)  # the epoch's one host sync
        times.append(time.perf_counter() - start)
    return times, losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def extra_calls_us(device, repeats: int = 2000) -> float:
    """Microseconds per step of what segtune's fp32 step adds to the plain one: the disabled
    autocast context, the disabled GradScaler's scale/unscale_/step/update and the grad-norm
    sum, on a one-parameter optimizer whose step itself is timed away."""
    param = torch.nn.Parameter(torch.zeros((), device=device))
    optimizer = torch.optim.SGD([param], lr=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss, norm, total = torch.ones((), device=device), torch.ones((), device=device), \
        torch.zeros((), device=device)

    def plain():
        optimizer.step()

    def segtune():
        nonlocal total
        with torch.autocast(device.type, dtype=None, enabled=False):
            pass
        scaler.scale(loss)
        scaler.unscale_(optimizer)
        total += norm
        scaler.step(optimizer)
        scaler.update()

    best = {}
    for fn in (plain, segtune) * 3:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        took = (time.perf_counter() - t0) / repeats
        best[fn.__name__] = min(best.get(fn.__name__, took), took)
    return (best["segtune"] - best["plain"]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data", default="cached", choices=["cached", "live"])
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0,
                        help="with --data live: background threads cropping patches")
    args = parser.parse_args()

    from train_fn.data import load_volumes
    from train_fn.datasets import dataset_root, find_cases, split_cases

    spec = make_spec(args)
    device = torch.device(args.device)
    root = dataset_root(spec.data)
    cases = find_cases(root)
    split = split_cases([c.case_id for c in cases], 0.2, 0.2, 0)
    by_id = {c.case_id: c for c in cases}
    volumes = load_volumes([by_id[i] for i in split["train"]], spec.data)
    batches = draw_patches(spec, volumes, device, args.data == "cached")

    rates = {"segtune": [], "plain": []}
    results = {}
    for rep in range(args.repeats):
        order = ["segtune", "plain"] if rep % 2 == 0 else ["plain", "segtune"]
        for name in order:
            if name == "segtune":
                results[name] = run_segtune(spec, split, root, batches, device)
            else:
                results[name] = run_plain(spec, batches, device)
            timed = results[name][0][1:]
            rates[name].append(args.steps * len(timed) / sum(timed))
        print(f"rep {rep}: " + ", ".join(f"{n} {rates[n][-1]:.3f} steps/s" for n in order),
              flush=True)

    med = {n: statistics.median(r) for n, r in rates.items()}
    data = f"live data ({args.workers} sampling threads)" if args.data == "live" else \
        "cached data"
    print(f"\n{args.device}, {args.precision}{' + compile' if args.compile else ''}, "
          f"{data}, UNet{tuple(args.channels)}, batch {args.batch} x "
          f"{tuple(args.patch)}, {args.threads} thread(s), {args.steps} steps x "
          f"{args.epochs - 1} timed epochs, {args.repeats} repeats:")
    print(f"  steps/s median: segtune {med['segtune']:.3f}, plain {med['plain']:.3f}, "
          f"ratio {med['segtune'] / med['plain']:.3f}x")
    ratios = [a / b for a, b in zip(rates["segtune"], rates["plain"], strict=True)]
    print(f"  median of the per-repeat ratios (each pair run back to back): "
          f"{statistics.median(ratios):.3f}x")
    print("  per repeat: " + "; ".join(
        f"{a:.3f} vs {b:.3f}" for a, b in zip(rates["segtune"], rates["plain"], strict=True)))
    (_, loss_a, w_a), (_, loss_b, w_b) = results["segtune"], results["plain"]
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(loss_a, loss_b, strict=True))
    weight_diff = max(float((w_a[k].float() - w_b[k].float()).abs().max()) for k in w_b)
    print(f"  per-epoch losses segtune {[round(x, 6) for x in loss_a]}, plain "
          f"{[round(x, 6) for x in loss_b]}: max relative difference {loss_diff:.2e}; "
          f"final weights max |difference| {weight_diff:.2e}")
    print(f"  segtune's extra Python per fp32 step (autocast off, GradScaler off, norm sum): "
          f"{extra_calls_us(device):.1f} us (best of 3 x 2000)")


if __name__ == "__main__":
    main()
