"""Server-side SVG plots for the console: deliveries per minute by state (stacked bars) and
accept-to-outcome latency percentiles per minute (lines). Plain markup, no script, so they
render under the console's CSP and read without JavaScript; each has a <title> and a
<desc> with the figures for screen readers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from herald.storage.activity import Outcome

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 26
# The order states stack in, and their CSS classes (colours live in console.css).
STATES = ("delivered", "sent", "deferred", "queued", "sending", "failed", "undeliverable")
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class Window:
    end: datetime
    minutes: int

    @property
    def start(self) -> datetime:
        return self.end - timedelta(minutes=self.minutes)

    def bucket(self, moment: datetime) -> int | None:
        index = int((moment - self.start).total_seconds() // 60)
        return index if 0 <= index < self.minutes else None


def _frame(
    title: str, desc: str, body: list[str], y_max: float, unit: str, window: Window
) -> Markup:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-labelledby="t-{id(body)} d-{id(body)}">',
        f'<title id="t-{id(body)}">{escape(title)}</title>',
        f'<desc id="d-{id(body)}">{escape(desc)}</desc>',
    ]
    for step in range(5):
        value = y_max * step / 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_number(value)}{escape(unit)}</text>"
        )
    for minutes_ago in range(window.minutes, -1, -max(1, window.minutes // 6)):
        x = LEFT + plot_w * (window.minutes - minutes_ago) / window.minutes
        label = "now" if minutes_ago == 0 else f"-{minutes_ago}m"
        anchor = "end" if minutes_ago == 0 else "middle"
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{label}</text>'
        )
    parts.extend(body)
    parts.append("</svg>")
    return Markup("".join(parts))


def _number(value: float) -> str:
    return f"{value:.3g}"


# Axis maxima whose quarters read well (the grid has four steps).
NICE = (0.1, 0.2, 0.4, 0.8, 1, 2, 4, 8, 12, 20, 40, 60, 80, 100, 200, 400, 600, 800, 1000)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 4.0
    magnitude = 1.0
    while value > NICE[-1] * magnitude:
        magnitude *= 10
    return next(float(n * magnitude) for n in NICE if value <= n * magnitude)


def deliveries_per_minute(outcomes: Sequence[Outcome], window: Window) -> Markup:
    counts: list[dict[str, int]] = [defaultdict(int) for _ in range(window.minutes)]
    for outcome in outcomes:
        index = window.bucket(outcome.updated_at)
        if index is not None:
            counts[index][outcome.state] += 1
    y_max = _nice_max(max((sum(c.values()) for c in counts), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar = plot_w / window.minutes
    body: list[str] = []
    for index, by_state in enumerate(counts):
        y = float(TOP + plot_h)
        for state in (*STATES, *sorted(set(by_state) - set(STATES))):
            count = by_state.get(state, 0)
            if not count:
                continue
            h = plot_h * count / y_max
            y -= h
            body.append(
                f'<rect class="s-{escape(state)}" x="{LEFT + index * bar + 1:.1f}" y="{y:.1f}" '
                f'width="{max(bar - 2, 1):.1f}" height="{h:.1f}"><title>{count} {escape(state)}'
                "</title></rect>"
            )
    totals: dict[str, int] = defaultdict(int)
    for by_state in counts:
        for state, count in by_state.items():
            totals[state] += count
    desc = ", ".join(f"{n} {s}" for s, n in sorted(totals.items())) or "no deliveries"
    title = f"Deliveries per minute by state, last {window.minutes} minutes"
    return _frame(title, desc, body, y_max, "", window)


def percentile(sorted_values: Sequence[float], p: int) -> float:
    """The nearest-rank percentile of values sorted ascending."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-p * len(sorted_values) // 100))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_percentiles(outcomes: Sequence[Outcome], window: Window) -> Markup:
    """p50/p95/p99 of (outcome time - creation time) of the deliveries handed over to their
    provider, per minute, in seconds."""
    per_minute: list[list[float]] = [[] for _ in range(window.minutes)]
    for outcome in outcomes:
        if outcome.state not in ("sent", "delivered"):
            continue
        index = window.bucket(outcome.updated_at)
        if index is not None:
            per_minute[index].append((outcome.updated_at - outcome.created_at).total_seconds())
    series = {
        p: [percentile(sorted(values), p) if values else None for values in per_minute]
        for p in PERCENTILES
    }
    y_max = _nice_max(max((v for s in series.values() for v in s if v is not None), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / window.minutes
    body: list[str] = []
    for p, values in series.items():
        points = [
            f"{LEFT + (i + 0.5) * step:.1f},{TOP + plot_h - plot_h * v / y_max:.1f}"
            for i, v in enumerate(values)
            if v is not None
        ]
        if points:
            body.append(f'<polyline class="p{p}" fill="none" points="{" ".join(points)}"/>')
            for point in points:  # a minute alone is a dot, not a line
                x, y = point.split(",")
                body.append(f'<circle class="p{p}" cx="{x}" cy="{y}" r="2.5"/>')
    everything = sorted(v for values in per_minute for v in values)
    desc = (
        ", ".join(f"p{p} {percentile(everything, p):.2f} s" for p in PERCENTILES)
        if everything
        else "no deliveries handed over"
    )
    title = f"Latency from accept to provider, p50/p95/p99, last {window.minutes} minutes"
    return _frame(title, desc, body, y_max, "s", window)
