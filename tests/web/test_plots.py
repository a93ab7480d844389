from datetime import UTC, datetime, timedelta

import pytest

from herald.storage.activity import Outcome
from herald.web.plots import Window, deliveries_per_minute, latency_percentiles, percentile

END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def outcome(state: str, minutes_ago: float, latency_s: float = 1.0) -> Outcome:
    at = END - timedelta(minutes=minutes_ago)
    return Outcome("push", "fcm", state, at - timedelta(seconds=latency_s), at, None)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 99, 4), (list(range(1, 101)), 95, 95), ([7], 50, 7)],
)
def test_nearest_rank_percentiles(values: list[float], p: int, expected: float) -> None:
    assert percentile(values, p) == expected


def test_bars_stack_by_state_within_the_window() -> None:
    window = Window(END, 10)
    outcomes = [outcome("sent", 0.5), outcome("sent", 0.6), outcome("failed", 0.7)]
    outcomes.append(outcome("sent", 30))  # outside the window: not drawn
    svg = str(deliveries_per_minute(outcomes, window))
    assert svg.count('<rect class="s-sent"') == 1
    assert svg.count('<rect class="s-failed"') == 1
    assert "<title>2 sent</title>" in svg
    assert "<desc" in svg
    assert "1 failed, 2 sent" in svg


def test_latency_lines_give_the_percentiles_in_words() -> None:
    window = Window(END, 10)
    outcomes = [outcome("sent", 1, latency_s=n / 10) for n in range(1, 101)]
    svg = str(latency_percentiles(outcomes, window))
    assert "p50 5.00 s, p95 9.50 s, p99 9.90 s" in svg
    assert svg.count("<polyline") == 3
