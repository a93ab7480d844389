"""Percentiles, the progress bar (stderr) and the human-readable table."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from herald.bench.memory import memory_lines

REPORT_KEYS = (
    "backend",
    "notifications",
    "deliveries",
    "accepted_per_s",
    "deliveries_per_s",
    "latency_ms",
    "peak_rss_mb",
    "cpu_s_per_1000",
    "lost",
    "duplicates",
    "baseline",
    "speedup",
)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank), 0 for an empty sample."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1))
        return round(ordered[index], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": round(ordered[-1], 2)}


class Progress:
    """One line on stderr, redrawn at most every 0.2 s (every 5 s when not a terminal)."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = max(total, 1)
        self.out = out
        self.tty = out.isatty()
        self.started = time.perf_counter()
        self._last = 0.0
        self._done = 0

    def update(self, done: int, force: bool = False) -> None:
        self._done = done
        now = time.perf_counter()
        if not force and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.label:<22} [{bar}] {done:>9,}/{self.total:,} {rate:>9,.0f}/s {elapsed:6.1f}s"
        self.out.write(("\r" + line) if self.tty else (line + "\n"))
        self.out.flush()

    def finish(self) -> None:
        self.update(self._done, force=True)
        if self.tty:
            self.out.write("\n")
        self.out.flush()


def stage(message: str, out: TextIO = sys.stderr) -> None:
    out.write(f"bench: {message}\n")
    out.flush()


def _rate_lines(rate: dict[str, Any] | None) -> list[str]:
    if not rate or rate.get("offered_per_s") is None:
        return []
    return [
        f"offered {rate['offered_per_s']:,.1f} notifications/s; achieved: accepted "
        f"{rate['accepted_per_s']:,.1f}/s over {rate['submit_s']:.1f} s, delivered "
        f"{rate['deliveries_per_s']:,.1f}/s (until the last delivery was final)"
    ]


def machine_line(report: dict[str, Any]) -> str:
    machine = report["machine"]
    return (
        f"machine: {machine['cpus']} CPUs, load before the run {machine['load_before']}, "
        f"after {machine['load_after']}"
    )


def table(report: dict[str, Any]) -> str:
    baseline = report["baseline"]
    latency = report["latency_ms"]
    lines = [
        f"herald bench: {report['backend']} backend, {report['notifications']:,} notifications "
        f"to {report['users']:,} users x {report['devices']} android devices, "
        f"{report['workers']} push worker process(es), provider latency "
        f"{report['provider_latency_ms']} ms",
        machine_line(report),
        "",
        f"{'':34}{'Herald':>14}{'naive baseline':>18}",
        f"{'deliveries':34}{report['deliveries']:>14,}{baseline['deliveries']:>18,}",
        f"{'deliveries / s':34}{report['deliveries_per_s']:>14,.0f}"
        f"{baseline['deliveries_per_s']:>18,.0f}",
        f"{'notifications accepted / s':34}{report['accepted_per_s']:>14,.0f}{'-':>18}",
        f"{'CPU s per 1,000 deliveries':34}{report['cpu_s_per_1000']:>14.3f}"
        f"{baseline['cpu_s_per_1000']:>18.3f}",
        f"{'latency p50 / p95 (ms)':34}{latency['p50']:>7.1f} /{latency['p95']:>6.1f}"
        f"{baseline['latency_ms']['p50']:>10.1f} /{baseline['latency_ms']['p95']:>6.1f}",
        f"{'latency p99 / max (ms)':34}{latency['p99']:>7.1f} /{latency['max']:>6.1f}"
        f"{baseline['latency_ms']['p99']:>10.1f} /{baseline['latency_ms']['max']:>6.1f}",
        f"{'lost / duplicates':34}{report['lost']:>8} /{report['duplicates']:>4}"
        f"{baseline['lost']:>12} /{baseline['duplicates']:>4}",
        f"{'speedup (Herald / baseline)':34}{report['speedup']:>14.1f}x",
        "",
        "peak RSS (MB) and CPU seconds per process:",
    ]
    for name, rss in report["peak_rss_mb"].items():
        cpu = report["cpu_s"].get(name, 0.0)
        lines.append(f"  {name:20}{rss:>10.1f} MB{cpu:>10.2f} s")
    lines.append(
        f"  {'(fakes, not counted)':20}{'':>13}{report['fake_cpu_s']:>10.2f} s  "
        f"({report['fake_cpu_s_per_1000']:.3f} s per 1,000)"
    )
    lines.append(f"per channel deliveries / s: {report['deliveries_per_s_by_channel']}")
    lines += _rate_lines(report.get("rate"))
    if baseline.get("skipped"):
        lines.append("naive baseline: not run (a paced run, or --no-baseline); its column is 0")
    lines += memory_lines(report.get("memory") or {})
    if report.get("notes"):
        lines += ["", *report["notes"]]
    return "\n".join(lines)
