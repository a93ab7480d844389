"""CPU and wake-ups of every thread of every running Herald process, from schedstat.

    herald bench --backend production --idle 45 --json > /dev/null &   # the idle fleet
    sleep 35                                                             # start + settle
    python docs/figures/2026-12-02-idle-threads.py 20 [ROLE-SUBSTRING]

Prints one line per thread of the processes whose role matches (all without a
substring), then a total per process. /proc/<pid>/task/<tid>/schedstat holds the thread's
time on a CPU (ns), time waiting to run, and the number of times it ran (its wake-ups).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

Sample = dict[tuple[str, str], tuple[str, str, int, int]]


def herald_threads() -> Sample:
    found: Sample = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if len(argv) < 3 or not argv[1].endswith("/herald") or argv[2] == "bench":
            continue
        role = " ".join(argv[2:5])
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                on_cpu, _, runs = map(
                    int, Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                )
            except OSError:
                continue
            found[(pid, tid)] = (role, name, on_cpu, runs)
    return found


def main(seconds: float, role_filter: str) -> None:
    before = herald_threads()
    time.sleep(seconds)
    after = herald_threads()
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, (role, name, on_cpu, runs) in sorted(after.items()):
        if key not in before or role_filter not in role:
            continue
        cpu_pct = (on_cpu - before[key][2]) / seconds / 1e7
        wakeups = (runs - before[key][3]) / seconds
        totals[role][0] += cpu_pct
        totals[role][1] += wakeups
        print(f"{role:32} {key[1]:>7} {name:16} {cpu_pct:6.3f} % {wakeups:6.1f} wake-ups/s")
    for role, (cpu_pct, wakeups) in sorted(totals.items()):
        print(f"total {role:26} {cpu_pct:6.3f} % {wakeups:6.1f} wake-ups/s")


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
