"""`herald bench --sweep`: the benchmark at several worker counts and several N, one fresh
Herald (and, in production, a fresh database and topic prefix) per cell, without the
naive baseline, summarised as a markdown table.

Worker processes only exist in production; the embedded backend sweeps N alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from herald.bench.harness import BenchConfig, run_bench
from herald.bench.report import stage

DEFAULT_WORKERS = (1, 2, 4)
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


def parse_counts(text: str) -> list[int]:
    """'10000,1e5' -> [10000, 100000]."""
    counts = [int(float(part)) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f"expected positive numbers separated by commas, got {text!r}")
    return counts


async def run_sweep(
    base: BenchConfig, workers: Sequence[int], sizes: Sequence[int]
) -> dict[str, Any]:
    if base.backend == "embedded":
        workers = [1]
    cells: list[dict[str, Any]] = []
    for count in workers:
        for size in sizes:
            stage(f"sweep: {count} worker(s), {size:,} notifications")
            config = replace(base, workers=count, notifications=size, baseline=False)
            cells.append(await run_bench(config))
    return {
        "sweep": [_row(cell) for cell in cells],
        "runs": cells,
        "lost": sum(cell["lost"] for cell in cells),
        "duplicates": sum(cell["duplicates"] for cell in cells),
    }


def _row(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "backend": report["backend"],
        "workers": report["workers"],
        "notifications": report["notifications"],
        "deliveries_per_s": report["deliveries_per_s"],
        "cpu_s_per_1000": report["cpu_s_per_1000"],
        "peak_rss_mb": report["peak_rss_mb"],
        "latency_ms": report["latency_ms"],
        "lost": report["lost"],
        "duplicates": report["duplicates"],
        # production only (null embedded): the servers' CPU and PostgreSQL's counters
        "postgres_cpu_s_per_1000": (report.get("postgres") or {}).get("cpu_s_per_1000"),
        "kafka_cpu_s_per_1000": (report.get("kafka") or {}).get("cpu_s_per_1000"),
        "rows_written_per_delivery": (report.get("rows_written") or {}).get("per_delivery"),
        "statements_per_delivery": (report.get("statements") or {}).get("per_delivery"),
        "load_before": report["machine"]["load_before"],
        "load_after": report["machine"]["load_after"],
    }


def _rss(peaks: dict[str, float]) -> str:
    workers = [mb for name, mb in peaks.items() if name.startswith("worker")]
    others = ", ".join(f"{n} {mb:.0f}" for n, mb in peaks.items() if not n.startswith("worker"))
    if not workers:
        return others
    return f"{others}, workers {min(workers):.0f}-{max(workers):.0f}"


def markdown(sweep: dict[str, Any]) -> str:
    lines = [
        "| workers | N | deliveries/s | CPU s per 1000 | p99 ms | peak RSS per process (MB) "
        "| lost | duplicates | load before / after |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for row in sweep["sweep"]:
        load = f"{row['load_before'][0]:.1f} / {row['load_after'][0]:.1f}"
        lines.append(
            f"| {row['workers']} | {row['notifications']:,} | {row['deliveries_per_s']:,.0f} "
            f"| {row['cpu_s_per_1000']:.2f} | {row['latency_ms']['p99']:,.0f} "
            f"| {_rss(row['peak_rss_mb'])} | {row['lost']} | {row['duplicates']} | {load} |"
        )
    return "\n".join(lines)
