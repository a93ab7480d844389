"""RSS over time for every Herald process: samples every `interval_s` during the measured
run, summarised per process as first / last / peak and a least-squares slope (MB per
minute), so "memory stays flat over a 10-minute run" is a figure, not a claim."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MB = 2**20


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute (0 under 2 points)."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    covariance = sum((t - mean_t) * (m - mean_m) for t, m in points)
    return 60.0 * covariance / spread


@dataclass
class MemoryTimeline:
    """(seconds since start, MB) per process name."""

    interval_s: float = 5.0
    started: float = field(default_factory=time.perf_counter)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _next: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self._next

    def record(self, now: float, rss_by_name: dict[str, int]) -> None:
        at = now - self.started
        for name, rss in rss_by_name.items():
            self.samples.setdefault(name, []).append((round(at, 2), rss / MB))
        self._next = now + self.interval_s

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: _summarise(points) for name, points in self.samples.items()}


def _summarise(points: list[tuple[float, float]]) -> dict[str, Any]:
    late = points[len(points) // 2 :]
    return {
        "samples": len(points),
        "span_s": round(points[-1][0] - points[0][0], 1),
        "first_mb": round(points[0][1], 1),
        "last_mb": round(points[-1][1], 1),
        "peak_mb": round(max(m for _, m in points), 1),
        "slope_mb_per_min": round(slope_per_minute(points), 3),
        # The second half alone: start-up growth (caches, pools) is not a leak.
        "late_slope_mb_per_min": round(slope_per_minute(late), 3),
        "series": [[at, round(mb, 1)] for at, mb in points],  # (seconds, MB)
    }


def memory_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The human-readable table of `MemoryTimeline.summary()`."""
    if not summary:
        return []
    lines = [
        "memory over the run (RSS MB; slope in MB/min, whole run / second half):",
        f"  {'process':20}{'first':>9}{'last':>9}{'peak':>9}{'slope':>9}{'late':>9}{'n':>6}",
    ]
    for name, row in summary.items():
        lines.append(
            f"  {name:20}{row['first_mb']:>9.1f}{row['last_mb']:>9.1f}{row['peak_mb']:>9.1f}"
            f"{row['slope_mb_per_min']:>9.2f}{row['late_slope_mb_per_min']:>9.2f}"
            f"{row['samples']:>6}"
        )
    return lines
