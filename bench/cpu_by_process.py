"""CPU seconds of one command, split by kind of process (the CLI's driver, Ray's trial workers,
Ray's own processes), sampled from /proc every 0.2 s while it runs (Linux only).

    python bench/cpu_by_process.py -- python -m search run spaces/smoke.yaml \
        --storage /tmp/cpu-runs --set tracking.plots=false --set lr_finder.enabled=false

A process that starts and ends between two samples is missed, and CPU time of processes that
ran before the command (a Ray left running) counts only from the start. Says where a search's
fixed cost goes on a small machine: the test suite and the demo are CPU-bound on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import time

KINDS = ("-m search", "ray::ImplicitFunc", "ray::IDLE", "ray::", "gcs_server", "raylet",
         "dashboard", "runtime_env", "log_monitor", "monitor.py", "forkserver",
         "default_worker")


def kind(cmdline: str) -> str:
    return next((k for k in KINDS if k in cmdline), cmdline[:50] or "?")


def cpu_seconds(pid: str) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    cmd = [c for c in parser.parse_args().command if c != "--"]
    before, seen, kinds = {}, {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            before[pid] = cpu_seconds(pid)
        except OSError:
            pass
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                used = cpu_seconds(pid) - before.get(pid, 0.0)
                cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
                if cmdline:  # the latest: a worker forks from the raylet, then names itself
                    kinds[pid] = kind(cmdline)
            except OSError:
                continue
            if used > 0:
                seen[pid] = max(used, seen.get(pid, 0.0))
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    wall = time.monotonic() - start
    total = collections.Counter()
    for pid, used in seen.items():
        total[kinds.get(pid, "?")] += used
    print(f"exit {proc.returncode}; wall {wall:.1f} s; CPU {sum(total.values()):.1f} s "
          f"({sum(total.values()) / wall:.2f} cores on average)")
    for name, used in total.most_common():
        if used >= 0.1:
            print(f"{used:7.1f} s  {name}")


if __name__ == "__main__":
    main()
