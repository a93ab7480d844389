"""From receipts and rows to figures: accept-to-receipt latency, lost and duplicated
deliveries, the baseline's block of the report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from herald.bench.baseline import BaselineResult
from herald.bench.report import percentiles

Row = tuple[str, str, datetime]  # (delivery id, state, notification accepted at)


@dataclass
class Receipts:
    """What the sink accepted: the first receipt time per delivery id, and the count of
    receipts beyond the first (duplicates are rare, so they are kept apart)."""

    first_ns: dict[str, int] = field(default_factory=dict)
    extra: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, lines: Iterable[tuple[str, str, int]]) -> Receipts:
        receipts = cls()
        for delivery_id, _token, at in lines:
            if delivery_id in receipts.first_ns:
                receipts.extra[delivery_id] += 1
            else:
                receipts.first_ns[delivery_id] = at
        return receipts


@dataclass
class Delivered:
    expected: int
    latencies_ms: list[float]
    lost: int
    duplicates: int
    states: Counter[str]

    @property
    def deliveries(self) -> int:
        return self.states["sent"] + self.states["delivered"]


def delivered(rows: list[Row], receipts: Receipts, expected: int) -> Delivered:
    """Latency of each received delivery; lost = expected - received at least once."""
    latencies: list[float] = []
    duplicates = 0
    for delivery_id, _state, accepted in rows:
        at = receipts.first_ns.get(delivery_id)
        if at is not None:
            latencies.append(at / 1e6 - accepted.timestamp() * 1000)
            duplicates += receipts.extra.get(delivery_id, 0)
    return Delivered(
        expected=expected,
        latencies_ms=latencies,
        lost=expected - len(latencies),
        duplicates=duplicates,
        states=Counter(state for _d, state, _a in rows),
    )


def baseline_block(
    result: BaselineResult | None, lines: Iterable[tuple[str, str, int]]
) -> dict[str, Any]:
    """The naive baseline's figures (zeros when it did not run)."""
    if result is None:
        return {
            "deliveries_per_s": 0.0,
            "deliveries": 0,
            "notifications": 0,
            "elapsed_s": 0.0,
            "cpu_s_per_1000": 0.0,
            "latency_ms": percentiles([]),
            "lost": 0,
            "duplicates": 0,
            "skipped": True,
        }
    counts: Counter[str] = Counter()
    latency: list[float] = []
    for delivery_id, _token, at in lines:
        if delivery_id in result.started_ns:
            counts[delivery_id] += 1
            if counts[delivery_id] == 1:
                latency.append((at - result.started_ns[delivery_id]) / 1e6)
    return {
        "deliveries_per_s": round(result.deliveries_per_s, 1),
        "deliveries": result.deliveries,
        "notifications": result.notifications,
        "elapsed_s": round(result.elapsed_s, 2),
        "cpu_s_per_1000": round(1000 * result.cpu_s / result.deliveries, 4)
        if result.deliveries
        else 0.0,
        "latency_ms": percentiles(latency),
        "lost": len(result.started_ns) - len(counts),
        "duplicates": sum(c - 1 for c in counts.values()),
    }
