"""How busy the machine's CPUs were while one command ran: the idle share of all cores, from
/proc/stat (Linux only), overall and per `--every` seconds.

    python bench/idle.py -- python -m pytest -n 0 tests/e2e
    python bench/idle.py -- python -m pytest -n 0 -m "not e2e"

Counts the whole machine, so run nothing else beside it. Says whether a command leaves cores
free (then a second process, e.g. a second test worker, has room) or is CPU-bound.
"""

from __future__ import annotations

import argparse
import subprocess
import time


def cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all cores since boot."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=30.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = [c for c in args.command if c != "--"]
    first = last = cpu_times()
    start = mark = time.monotonic()
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        time.sleep(0.5)
        if time.monotonic() - mark >= args.every:
            now = cpu_times()
            print(f"[idle.py] {time.monotonic() - start:6.0f} s: "
                  f"{(now[0] - last[0]) / max(1, now[1] - last[1]):.0%} idle", flush=True)
            last, mark = now, time.monotonic()
    end = cpu_times()
    idle = (end[0] - first[0]) / max(1, end[1] - first[1])
    print(f"[idle.py] exit {proc.returncode}; {time.monotonic() - start:.1f} s; "
          f"{idle:.0%} of the CPUs idle")
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
