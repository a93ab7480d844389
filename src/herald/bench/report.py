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
    "postgres",
    "kafka",
    "rows_written",
    "statements",
    "peers",
    "profiles",
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


def _columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Herald, the naive baseline, then each peer: (heading, figures)."""
    herald = {
        key: report[key]
        for key in ("deliveries", "deliveries_per_s", "cpu_s_per_1000", "latency_ms", "lost")
    }
    herald |= {"duplicates": report["duplicates"], "accepted_per_s": report["accepted_per_s"]}
    columns = [("Herald", herald), ("naive baseline", report["baseline"])]
    columns += list((report.get("peers") or {}).items())
    return columns


def _row(label: str, cells: list[str]) -> str:
    return f"{label:34}" + "".join(f"{cell:>18}" for cell in cells)


def _comparison(report: dict[str, Any]) -> list[str]:
    columns = _columns(report)
    figures = [column for _name, column in columns]

    def pair(values: tuple[float, float]) -> str:
        return f"{values[0]:.1f} / {values[1]:.1f}"

    lines = [
        _row("", [name for name, _ in columns]),
        _row("deliveries", [f"{f['deliveries']:,}" for f in figures]),
        _row("deliveries / s", [f"{f['deliveries_per_s']:,.0f}" for f in figures]),
        _row(
            "notifications accepted / s",
            [f"{report['accepted_per_s']:,.0f}"] + ["-"] * (len(figures) - 1),
        ),
        _row("CPU s per 1,000 deliveries", [f"{f['cpu_s_per_1000']:.3f}" for f in figures]),
        _row(
            "latency p50 / p95 (ms)",
            [pair((f["latency_ms"]["p50"], f["latency_ms"]["p95"])) for f in figures],
        ),
        _row(
            "latency p99 / max (ms)",
            [pair((f["latency_ms"]["p99"], f["latency_ms"]["max"])) for f in figures],
        ),
        _row("lost / duplicates", [f"{f['lost']} / {f['duplicates']}" for f in figures]),
        _row(
            "speedup (Herald / column)",
            ["-", "-" if report["baseline"].get("skipped") else f"{report['speedup']:.1f}x"]
            + [f"{f.get('speedup', 0.0):.1f}x" for f in figures[2:]],
        ),
    ]
    for name, peer in (report.get("peers") or {}).items():
        lines.append(
            f"{name}: {peer['client']}, {peer['calls']:,} calls of {peer['tokens_per_call']} "
            f"tokens, {peer['elapsed_s']} s, {peer['failed']} failed"
        )
    return lines


def server_lines(report: dict[str, Any]) -> list[str]:
    """PostgreSQL and Kafka CPU, rows written and statements (production only)."""
    postgres, kafka = report.get("postgres"), report.get("kafka")
    rows, statements = report.get("rows_written"), report.get("statements")
    if report.get("backend") != "production":
        return [
            "PostgreSQL / Kafka CPU, rows written, statements: production only (the embedded "
            "backend has no server, and nothing outside SQLite's process counts its writes)"
        ]
    lines = ["per delivery, on the servers (production):"]
    if postgres is not None:
        lines.append(
            f"  PostgreSQL CPU        {postgres['cpu_s_per_1000']:.3f} s per 1,000 "
            f"({postgres['cpu_us_per_delivery']:,.0f} us each; whole server, pid "
            f"{postgres['pid']}); the bench database's {postgres['bench_db_backends']} "
            f"backends {postgres['bench_db_cpu_s_per_1000']:.3f} s per 1,000"
        )
    if kafka is not None:
        lines.append(
            f"  Kafka broker CPU      {kafka['cpu_s_per_1000']:.3f} s per 1,000 "
            f"({kafka['cpu_us_per_delivery']:,.0f} us each; pid {kafka['pid']})"
        )
    if rows is not None:
        lines.append(
            f"  rows written          {rows['per_delivery']:.2f} ({rows['total']:,}: inserted "
            f"{rows['inserted']:,}, updated {rows['updated']:,}, deleted {rows['deleted']:,}; "
            f"{rows['source']})"
        )
    if statements is not None:
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in statements["by_kind"].items())
        lines.append(
            f"  statements            {statements['per_delivery']:.2f} "
            f"({statements['without_transaction_control_per_delivery']:.2f} without "
            f"BEGIN/COMMIT; {statements['total']:,}: {kinds}; {statements['source']})"
        )
    else:
        lines.append("  statements            not counted (pg_stat_statements not loaded)")
    return lines


def table(report: dict[str, Any]) -> str:
    lines = [
        f"herald bench: {report['backend']} backend, {report['notifications']:,} notifications "
        f"to {report['users']:,} users x {report['devices']} android devices, "
        f"{report['workers']} push worker process(es), provider latency "
        f"{report['provider_latency_ms']} ms",
        machine_line(report),
        "",
        *_comparison(report),
        "",
        *server_lines(report),
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
    if report["baseline"].get("skipped"):
        lines.append("naive baseline: not run (a paced run, or --no-baseline); its column is 0")
    if report.get("profiles"):
        lines.append("profiles (py-spy, measured run):")
        lines += [f"  {name:20}{path}" for name, path in report["profiles"].items()]
    lines += memory_lines(report.get("memory") or {})
    if report.get("notes"):
        lines += ["", *report["notes"]]
    return "\n".join(lines)
