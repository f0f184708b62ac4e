"""segtune on SegTHOR-sized data: a short real search (`python -m search run`, Ray, MLflow) on
the first N cases of a folder written by `bench/segthor_data.py`, for each N, reporting:

- the data check and the cache build (from the run's own progress lines), the cache's size
  on disk against the input's;
- time to the first training step (a trial's data set-up: open the N cases' cached volumes,
  crop the first batch);
- peak memory of the driver and of each trial worker, sampled from /proc every 0.5 s:
  anonymous (private: heap, tensors) and file-backed (the memory-mapped cache, shared through
  the page cache by every process on the node), and PSS (each shared page split among the
  processes mapping it, so PSS sums to the true total);
- validation time per case with and without HD95 (the best trial's weights after the short
  search: an early, poor prediction, the costly case for HD95).

Each N gets a fresh cache folder (so the build is measured), under `--work`. With
`--concurrency`, the largest N is also run with 1 and with 4 trials at once on the built cache
(resources.cpu 0.5 each), to compare the total memory of 4 trials against one.

    python bench/segthor_data.py /data/segthor-like --cases 40
    python bench/real_size.py --data /data/segthor-like --work /data/bench --cases 8 16 40 \\
        --concurrency
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = [
    "data.source=segthor", "data.spacing=[1.5,1.5,2.5]", "data.val_fraction=0.1",
    "data.test_fraction=0.1", "model.channels=[8,16,32,64]", "model.strides=[2,2,2]",
    "train.epochs=1", "train.steps_per_epoch=4", "train.patch_size=[96,96,48]",
    "train.sw_batch_size=2", "train.val_hd95=false", "soup.enabled=false",
    "lr_finder.enabled=false", "search.scheduler=fifo",
]


def status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile (kB) from /proc/pid/status and Pss from smaps_rollup."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of `root` and every process below it."""
    parent, cmd = {}, {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(p.name)] = int(fields[1])
            cmd[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    keep, frontier = {root}, [root]
    while frontier:
        node = frontier.pop()
        for pid, ppid in parent.items():
            if ppid == node and pid not in keep:
                keep.add(pid)
                frontier.append(pid)
    return {pid: cmd.get(pid, "") for pid in keep}


class Monitor(threading.Thread):
    """Peak memory per process (driver, trial workers, Ray task workers) of a run."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.kind = root, {}, {}
        self.stop = threading.Event()
        self.samples: list[dict[str, float]] = []
        self.series: list[tuple[float, int, int]] = []  # (time, trial worker pid, RssAnon kB)

    def run(self) -> None:
        while not self.stop.is_set():
            trials_pss = 0
            for pid, cmd in descendants(self.root).items():
                kind = ("driver" if pid == self.root else "trial" if "ImplicitFunc" in cmd
                        else "task" if re.search(r"ray::(build_entry|check_case)", cmd)
                        else None)
                if kind is None:
                    continue
                s = status(pid)
                if not s:
                    continue
                if kind != "task" or "build_entry" in cmd or "check_case" in cmd:
                    self.kind[pid] = max(self.kind.get(pid, ""), kind)
                peak = self.peak.setdefault(pid, {})
                for k, v in s.items():
                    peak[k] = max(peak.get(k, 0), v)
                if kind == "trial":
                    trials_pss += s.get("Pss", 0)
                    self.series.append((time.monotonic(), pid, s.get("RssAnon", 0)))
            self.samples.append({"trials_pss": trials_pss})
            self.stop.wait(0.5)

    def summary(self) -> dict[str, object]:
        gib = 2**20
        by_kind: dict[str, list[dict[str, float]]] = {}
        for pid, peak in self.peak.items():
            by_kind.setdefault(self.kind.get(pid, "?"), []).append(
                {k: round(v / gib, 3) for k, v in peak.items()})
        return {"per_process_peak_gib": by_kind,
                "trials_total_pss_peak_gib": round(
                    max((s["trials_pss"] for s in self.samples), default=0) / gib, 3)}


def run_search(root: Path, work: Path, name: str, cache: Path, extra: list[str]
               ) -> dict[str, object]:
    settings = [*SETTINGS, f"data.root={root}", f"data.cache_dir={cache}", *extra]
    args = [sys.executable, "-m", "search", "run", "spaces/novograd.yaml", "--name", name,
            "--storage", str(work / "runs")]
    for s in settings:
        args += ["--set", s]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    monitor = Monitor(proc.pid)
    monitor.start()
    times: dict[str, float] = {}
    lines, starts = [], []
    for line in proc.stderr:
        lines.append(line)
        now = time.monotonic() - start
        m = re.search(r"(data check|cache): \d+/\d+ cases .* took ([\d.]+)s", line)
        if m:
            times[f"{m.group(1)}_s"] = float(m.group(2))
        if "started:" in line:
            starts.append(time.monotonic())
            times.setdefault("first_trial_start_s", round(now, 1))
        if " epoch 1/" in line and "first_result_s" not in times:
            times["first_result_s"] = round(now, 1)
    code = proc.wait()
    monitor.stop.set()
    monitor.join()
    times["total_s"] = round(time.monotonic() - start, 1)
    if code != 0:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"{name}: the search failed ({code})")
    # Per trial (in start order): the peak private memory of the workers while it ran; with
    # one trial at a time, a reused worker shows whether it kept the previous trial's data.
    bounds = [*starts, float("inf")]
    per_trial = [round(max((a for t, _, a in monitor.series if lo <= t < hi), default=0)
                       / 2**20, 3) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    pids = sorted({pid for _, pid, _ in monitor.series})
    return {"times": times, "memory": monitor.summary(),
            "trial_anon_peak_gib_in_start_order": per_trial, "trial_worker_pids": len(pids)}


def view(data: Path, work: Path, n: int) -> Path:
    """A SegTHOR-layout folder of the first `n` cases (symbolic links)."""
    root = work / f"data-n{n}"
    cases = sorted((data / "train").iterdir())[:n]
    if len(cases) < n:
        raise SystemExit(f"{data}: {len(cases)} cases, {n} asked for")
    for case in cases:
        link = root / "train" / case.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(case.resolve(), target_is_directory=True)
    return root


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def first_step_and_validation(root: Path, cache: Path, run_dir: Path, cases: int
                              ) -> dict[str, object]:
    """In this process: a trial's data set-up to its first batch; validation per case."""
    import torch

    from search.spec import load_spec
    from search.storage import load_run_checkpoint
    from train_fn.data import PatchSampler, load_volumes
    from train_fn.datasets import open_dataset
    from train_fn.metrics import evaluate
    from train_fn.models import build_model

    spec = load_spec(run_dir / "spec.yaml")
    run = json.loads((run_dir / "run.json").read_text())
    ds = open_dataset(spec.data, root)
    t = time.perf_counter()
    vols = load_volumes(ds.subset(run["split"]["train"]), spec.data, ds.num_classes)
    sampler = PatchSampler(vols, spec.train.patch_size, 0, ds.num_classes)
    next(iter(sampler.epoch(0, 1, spec.train.batch_size)))
    first = time.perf_counter() - t
    summary = json.loads((run_dir / "summary.json").read_text())
    state = load_run_checkpoint(run_dir, summary["trials"][0]["checkpoint"])
    model = build_model(spec.model, len(ds.channels), ds.num_classes)
    model.load_state_dict(state["model"])
    torch.set_num_threads(os.cpu_count() or 1)
    val = load_volumes(ds.subset(run["split"]["val"][:2]), spec.data, ds.num_classes)
    per = {"with_hd95": [], "without_hd95": []}
    for v in val:
        for key, hd in (("without_hd95", False), ("with_hd95", True)):
            t = time.perf_counter()
            evaluate(model, [v], spec.train, torch.device("cpu"), ds.regions, with_hd95=hd)
            per[key].append(round(time.perf_counter() - t, 1))
    return {"first_step_s": round(first, 2), "validation_s_per_case": per,
            "val_shape": list(val[0]["image"].shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cases", type=int, nargs="+", default=[8, 16, 40])
    parser.add_argument("--concurrency", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    results = {}
    for n in args.cases:
        root = view(args.data, args.work, n)
        cache = args.work / f"cache-n{n}"
        stamp = time.strftime("%H%M%S")
        name = f"n{n}-{stamp}"
        r = run_search(root, args.work, name, cache,
                       ["search.num_trials=2", "search.max_concurrent=2"])
        input_bytes = sum(size(p) for p in (root / "train").iterdir())
        r["cache_gib"] = round(size(cache) / 2**30, 3)
        r["input_gib"] = round(input_bytes / 2**30, 3)
        r["cache_to_input"] = round(size(cache) / input_bytes, 3)
        r.update(first_step_and_validation(root, cache, args.work / "runs" / name, n))
        if args.concurrency and n == max(args.cases):
            for k in (1, 4):  # one at a time: three trials, one reused worker
                c = run_search(root, args.work, f"n{n}-x{k}-{stamp}", cache,
                               [f"search.num_trials={max(k, 3)}", f"search.max_concurrent={k}",
                                "resources.cpu=0.5", "train.steps_per_epoch=8"])
                r[f"concurrent_{k}"] = c
            one = max(r["concurrent_1"]["memory"]["per_process_peak_gib"]["trial"],
                      key=lambda m: m["Pss"])["Pss"]
            four = r["concurrent_4"]["memory"]["trials_total_pss_peak_gib"]
            r["four_to_one_total_pss"] = round(four / one, 2) if one else None
        results[n] = r
        print(json.dumps({n: r}, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    for n, r in results.items():
        trial = r["memory"]["per_process_peak_gib"].get("trial", [])
        anon = statistics.median(t.get("RssAnon", 0) for t in trial) if trial else None
        print(f"N={n}: check {r['times'].get('data check_s')}s, cache "
              f"{r['times'].get('cache_s')}s, {r['cache_gib']} GiB ({r['cache_to_input']}x input),"
              f" first step {r['first_step_s']}s, trial private (RssAnon) {anon} GiB, "
              f"validation {r['validation_s_per_case']}")


if __name__ == "__main__":
    main()
