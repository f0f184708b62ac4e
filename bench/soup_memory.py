"""Time and peak memory of a uniform soup of K checkpoints: segtune's streaming running sum
(search.soup.average over loaders) against loading all K models and then averaging them.

The checkpoints are real ones in segtune's format (`train_fn.checkpoint.save_checkpoint`): a
MONAI UNet (16, 32, 64, 128, 256) with 2 residual units (4.8 M parameters, 19 MB of fp32
weights) and its AdamW state (exp_avg, exp_avg_sq: twice the weights again), one base model
with its weights perturbed per checkpoint. Each (method, K) runs in a fresh Python process;
peak memory is that process's peak resident set (VmHWM in /proc/self/status; ru_maxrss would
inherit the parent's peak through exec) minus its peak just before averaging (after imports).
Files are in the page cache (written just before). Methods:

- naive: `[load_checkpoint(p)["model"] for p in paths]`, then one `torch.stack(...).mean(0)`
  per tensor (what a hand-written script does);
- stream: `search.soup.average` over `load_checkpoint(p)["model"]` loaders: a float32
  running sum, one checkpoint in memory at a time (optimizer state included, then dropped);
- stream-mmap: the same with `load_checkpoint(p, mmap=True)`: only the weights' pages of each
  checkpoint are read (what `search.soup.finish` uses).

    python bench/soup_memory.py --k 2 8 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("naive", "stream", "stream-mmap")


def write_checkpoints(folder: Path, k: int) -> float:
    """K checkpoints of one UNet with perturbed weights and AdamW state; returns MB of
    weights per model."""
    import torch
    from monai.networks.nets import UNet

    from train_fn.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = UNet(3, 1, 5, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 32, 32, 32)).mean().backward()
    optimizer.step()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in range(k):
        gen = torch.Generator().manual_seed(i)
        weights = {name: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                   else v for name, v in base.items()}
        save_checkpoint(folder / f"trial_{i:03d}", {
            "format": 1, "epoch": 1, "model": weights, "optimizer": optimizer.state_dict(),
            "scheduler": {}, "metrics": {"val_dice": 0.5}, "config": {},
            "architecture": {"name": "unet"}, "init_seed": 0, "init_fingerprint": "x"})
    return sum(v.numel() * v.element_size() for v in base.values()) / 1e6


def peak_mb() -> float:
    """This process's peak resident set, VmHWM of /proc/self/status (Linux). Not ru_maxrss: it
    carries over through exec, so a child started by a big parent reports the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(method: str, k: int, folder: Path) -> None:
    import torch

    from search.soup import average
    from train_fn.checkpoint import load_checkpoint

    # One thread: on a machine shared with other jobs, two OpenMP threads made the in-place
    # adds 7-10x slower (waiting on each other); one is also what a soup needs.
    torch.set_num_threads(1)
    paths = sorted(folder.glob("trial_*"))[:k]
    before = peak_mb()
    t0 = time.perf_counter()
    if method == "naive":
        models = [load_checkpoint(p)["model"] for p in paths]
        soup = {name: torch.stack([m[name] for m in models]).mean(0)
                if models[0][name].is_floating_point() else models[0][name]
                for name in models[0]}
    else:
        mmap = method == "stream-mmap"
        soup = average([lambda p=p: load_checkpoint(p, mmap=mmap)["model"] for p in paths])
    seconds = time.perf_counter() - t0
    checksum = sum(float(v.double().sum()) for v in soup.values())
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb() - before, "checksum": checksum}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "K", "DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_mb = write_checkpoints(folder, max(args.k))
        ckpt_mb = (folder / "trial_000" / "checkpoint.pt").stat().st_size / 1e6
        print(f"model weights {model_mb:.1f} MB, checkpoint file {ckpt_mb:.1f} MB", flush=True)
        runs: dict[tuple[str, int], list[dict]] = {}
        for rep in range(args.repeats):
            for k in args.k:
                order = METHODS if rep % 2 == 0 else METHODS[::-1]
                for method in order:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", method, str(k), str(folder)],
                        check=True, capture_output=True, text=True, cwd=ROOT)
                    runs.setdefault((method, k), []).append(json.loads(out.stdout))
            print(f"repeat {rep} done", flush=True)

    med = statistics.median
    print(f"\nuniform soup, {args.repeats} repeats, medians (peak: MB above the process's "
          f"peak before averaging; model weights {model_mb:.1f} MB):")
    print("| K | method | time (s) | peak memory (MB) | peak / model |")
    print("| --- | --- | --- | --- | --- |")
    for k in args.k:
        sums = {round(r["checksum"], 1) for m in METHODS for r in runs[(m, k)]}
        for method in METHODS:
            rows = runs[(method, k)]
            peak = med(r["peak_mb"] for r in rows)
            print(f"| {k} | {method} | {med(r['seconds'] for r in rows):.2f} | {peak:.0f} | "
                  f"{peak / model_mb:.1f}x |")
        if len(sums) != 1:
            print(f"warning: K={k}: the methods' averages differ (checksums {sorted(sums)})")


if __name__ == "__main__":
    main()
