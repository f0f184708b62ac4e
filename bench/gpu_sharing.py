"""Several trials on one device: total training throughput of 1, 2 and 4 concurrent trials,
each a process running segtune's real loop (`train_fn.loop.train`: patches cropped on the CPU
every step, validation after every epoch) with `resources.gpu` = 1/N, which caps each trial's
CUDA allocator at that share of the GPU's memory; and, with `--oom`, what a trial that needs
more than its share gets.

This is what Ray does on one node with `resources.gpu: 1/N` (N trial processes at once), done
with N spawned processes started together behind a barrier: Ray's wheel is not installed on
the GPU machine, and the loop needs none of it. Per trial: steps per second over the epochs
after the first (warm-up: cuDNN autotuning, first allocations), validation included, and its
peak allocated memory. Total = the sum over the N trials. Repeats take medians.

    python bench/gpu_sharing.py --device cuda --trials 1 2 4 --repeats 3
    python bench/gpu_sharing.py --device cuda --oom --batch 32 --patch 128 128 128
        # trial 0 needs more than its quarter; it is retried once, the 3 others go on
    python bench/gpu_sharing.py --device cpu --trials 1 2 --repeats 3 \\
        --channels 8 16 32 --patch 32 32 16             # the same on CPU cores (1 thread each)

Needs the training stack only (torch, monai, numpy, nibabel, scipy, pydantic, pyyaml).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_spec(args, share: float, batch: int | None = None):
    from search.spec import Spec

    return Spec.model_validate({
        "data": {"source": "phantom", "cases": args.cases, "val_fraction": 0.2,
                 "test_fraction": 0.2},
        "model": {"name": "unet", "channels": args.channels,
                  "strides": [2] * (len(args.channels) - 1), "num_res_units": 1, "init_seed": 0},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        "train": {"epochs": args.epochs, "steps_per_epoch": args.steps,
                  "batch_size": batch or args.batch,
                  "patch_size": args.patch, "device": args.device, "threads": args.threads,
                  "precision": args.precision, "val_hd95": False},
        "resources": {"cpu": args.cpus, "gpu": share if args.device == "cuda" else 0},
        "search": {"max_concurrent": args.concurrent},
    })


def trial(rank: int, share: float, args, barrier, queue) -> None:
    """One trial process: train, then send (rank, per-epoch end times, peak GiB or error).
    With --oom, trial 0 takes `--batch` and the others `--oom-others-batch`; a failed trial 0
    is run once more in the same process, as Ray retries it (`search.max_failures: 1`)."""
    import torch

    from train_fn.datasets import open_dataset, split_cases
    from train_fn.loop import train

    big = not args.oom or rank == 0
    spec = make_spec(args, share, None if big else args.oom_others_batch)
    ds = open_dataset(spec.data)
    split = split_cases([c.case_id for c in ds.cases], 0.2, 0.2, 0)
    ends: list[float] = []
    errors: list[str] = []
    barrier.wait()
    start = time.perf_counter()
    for _ in range(2 if args.oom and rank == 0 else 1):
        ends.clear()
        try:
            train(spec, split, ds, report=lambda m, s: ends.append(time.perf_counter()))
            break
        except Exception as err:  # noqa: BLE001 -- reported, as Ray records the trial's error
            errors.append(f"{type(err).__name__} after {time.perf_counter() - start:.1f} s: "
                          f"{err}")
    peak = (torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None)
    queue.put({"rank": rank, "start": start, "ends": ends, "peak_gib": peak,
               "error": errors[-1] if len(errors) == (2 if args.oom and rank == 0 else 1)
               else None, "errors": errors, "batch": spec.train.batch_size,
               "wall_s": time.perf_counter() - start})


def run(n: int, args) -> list[dict]:
    """N trials at once, each with 1/N of the device."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    share = args.share or 1.0 / n
    procs = [ctx.Process(target=trial, args=(i, share, args, barrier, queue)) for i in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join()
    return sorted(results, key=lambda r: r["rank"])


def rate(result: dict, steps: int) -> float:
    """Steps per second after the warm-up epoch, validation included."""
    ends = result["ends"]
    return steps * (len(ends) - 1) / (ends[-1] - ends[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="the first is warm-up")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--cpus", type=int, default=1,
                        help="resources.cpu per trial (sets the patch-sampling threads)")
    parser.add_argument("--oom-others-batch", type=int, default=2,
                        help="with --oom: the batch of trials 1-3")
    parser.add_argument("--share", type=float, default=None,
                        help="resources.gpu of every trial (default: 1/N)")
    parser.add_argument("--oom", action="store_true",
                        help="4 trials at 1/4 each, with a batch that needs more than 1/4")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    args.concurrent = max(args.trials)

    from search.spec import Spec
    from train_fn.datasets import open_dataset

    open_dataset(Spec.model_validate({"data": {"source": "phantom", "cases": args.cases}}).data)
    if args.oom:
        return oom(args)

    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({args.threads} " \
        "thread(s) per trial)"
    print(f"{name}; UNet{tuple(args.channels)}, batch {args.batch} x {tuple(args.patch)}, "
          f"{args.precision}, {args.steps} steps x {args.epochs - 1} timed epochs per trial, "
          f"validation on {args.cases // 5} patients every epoch; {args.repeats} repeats\n")
    totals: dict[int, list[float]] = {n: [] for n in args.trials}
    peaks: dict[int, list[float]] = {n: [] for n in args.trials}
    for rep in range(args.repeats):
        for n in args.trials:
            results = run(n, args)
            failed = [r["error"] for r in results if r["error"]]
            if failed:
                print(f"rep {rep}, {n} trial(s): {len(failed)} failed: {failed[0]}")
                totals[n].append(0.0)
                continue
            rates = [rate(r, args.steps) for r in results]
            totals[n].append(sum(rates))
            if args.device == "cuda":
                peaks[n].append(max(r["peak_gib"] for r in results))
            print(f"rep {rep}, {n} trial(s): total {sum(rates):.2f} steps/s "
                  f"(per trial {', '.join(f'{x:.2f}' for x in rates)})", flush=True)
    base = statistics.median(totals[args.trials[0]])
    print("\n| trials at once | resources.gpu | total steps/s (median) | vs 1 | per trial "
          "| peak GiB per trial |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in args.trials:
        med = statistics.median(totals[n])
        peak = f"{max(peaks[n]):.2f}" if peaks[n] else "-"
        share = f"{args.share or 1 / n:g}" if args.device == "cuda" else "- (CPU)"
        print(f"| {n} | {share} | {med:.2f} | {med / base:.2f}x | {med / n:.2f} | {peak} |")


def oom(args) -> None:
    """4 trials at resources.gpu 0.25; trial 0's batch is too big for a quarter. It must fail
    promptly with segtune's OutOfMemory (and again on its retry), not hang, and the other
    three must finish their training."""
    n = 4
    t0 = time.perf_counter()
    results = run(n, args)
    print(f"{n} trials at resources.gpu 0.25, patch {tuple(args.patch)}, trial 0 batch "
          f"{args.batch}, trials 1-3 batch {args.oom_others_batch}: "
          f"{time.perf_counter() - t0:.1f} s")
    for r in results:
        print(f"  trial {r['rank']} (batch {r['batch']}): {len(r['ends'])}/{args.epochs} "
              f"epochs, {'failed' if r['error'] else 'finished'} in {r['wall_s']:.1f} s, "
              f"peak {r['peak_gib'] or 0:.2f} GiB")
        for i, e in enumerate(r["errors"]):
            print(f"    attempt {i + 1}: {e}")


if __name__ == "__main__":
    main()
