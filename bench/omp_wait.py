"""Several torch processes on few cores: GNU OpenMP's default wait policy (threads spin while
they wait for work) against OMP_WAIT_POLICY=PASSIVE, side by side in one run.

    python bench/omp_wait.py --processes 2 --threads 2 --repeats 5

Each process runs the same small 3D convolutions (the smoke model's patch size) with
`--threads` torch threads; all `--processes` start together. Reports the median over
`--repeats` of the slowest process's wall time and of the CPU seconds all of them used (the
convolutions only, not the start-up). Why the test suite sets PASSIVE (tests/conftest.py): it
runs test workers, drivers and trials at once on 2 cores. One process alone is the control:
there the policy should not matter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORK = """
import json, resource, time, torch
torch.set_num_threads({threads})
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv3d(8, 8, 3, padding=1))
x = torch.randn(4, 1, 32, 32, 16)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
begin, start = cpu(), time.perf_counter()
with torch.no_grad():
    for _ in range({steps}):
        net(x)
print(json.dumps({{"wall": time.perf_counter() - start, "cpu": cpu() - begin}}))
"""


def once(processes: int, threads: int, steps: int, policy: str | None) -> tuple[float, float]:
    """(the slowest process's wall seconds, CPU seconds of all) for one start of them all."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = WORK.format(threads=threads, steps=steps)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    results = [json.loads(p.communicate()[0]) for p in procs]
    return max(r["wall"] for r in results), sum(r["cpu"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.steps} forward passes per process, "
          f"{args.threads} torch threads each; median of {args.repeats}")
    print(f"{'processes':>9}  {'policy':<8} {'wall s':>7} {'CPU s':>7}")
    for processes in sorted({1, args.processes}):
        medians = {}
        for policy in (None, "PASSIVE"):
            runs = [once(processes, args.threads, args.steps, policy)
                    for _ in range(args.repeats)]
            medians[policy] = (statistics.median(r[0] for r in runs),
                               statistics.median(r[1] for r in runs))
            wall, cpu = medians[policy]
            print(f"{processes:>9}  {policy or 'default':<8} {wall:7.2f} {cpu:7.2f}")
        ratio = medians[None][0] / medians["PASSIVE"][0]
        print(f"{processes:>9}  default / PASSIVE wall: {ratio:.1f}x")


if __name__ == "__main__":
    main()
