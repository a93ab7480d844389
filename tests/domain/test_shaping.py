"""Frequency-cap and digest windows: where an instant falls, on fixed and local-time windows."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.domain import (
    Channel,
    DigestRule,
    FrequencyCap,
    default_digest_text,
    digest_id,
    fixed_window,
)

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"]
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "seconds", "start", "end"),
    [
        ("2026-03-01T10:59:59", 3600, "2026-03-01T10:00:00", "2026-03-01T11:00:00"),
        ("2026-03-01T11:00:00", 3600, "2026-03-01T11:00:00", "2026-03-01T12:00:00"),
        ("2026-03-01T23:30:00", 86400, "2026-03-01T00:00:00", "2026-03-02T00:00:00"),
        ("2026-03-01T10:07:00", 600, "2026-03-01T10:00:00", "2026-03-01T10:10:00"),
    ],
)
def test_fixed_windows_align_to_the_epoch(instant: str, seconds: int, start: str, end: str) -> None:
    window = FrequencyCap(3, seconds).window(at(instant))
    assert (window.start, window.end) == (at(start), at(end))


@given(instant=instants, seconds=st.integers(60, 7 * 86400))
def test_a_fixed_window_holds_its_instant_and_the_next_begins_where_it_ends(
    instant: datetime, seconds: int
) -> None:
    window = fixed_window(instant, seconds)
    assert window.contains(instant)
    assert window.end - window.start == timedelta(seconds=seconds)
    assert fixed_window(window.end, seconds).start == window.end


@pytest.mark.parametrize(
    ("zone", "instant", "start", "end"),
    [
        # 18:00 in New York is 23:00 UTC in winter
        ("America/New_York", "2026-01-10T22:59:00", "2026-01-09T23:00:00", "2026-01-10T23:00:00"),
        # an item at the very close belongs to the next window
        ("America/New_York", "2026-01-10T23:00:00", "2026-01-10T23:00:00", "2026-01-11T23:00:00"),
        # the window spanning the spring-forward night is 23 hours long
        ("America/New_York", "2026-03-08T12:00:00", "2026-03-07T23:00:00", "2026-03-08T22:00:00"),
        # and the one spanning the fall-back night 25
        ("America/New_York", "2026-11-01T12:00:00", "2026-10-31T22:00:00", "2026-11-01T23:00:00"),
    ],
)
def test_daily_windows_close_at_the_users_local_time(
    zone: str, instant: str, start: str, end: str
) -> None:
    window = DigestRule(at_local=time(18, 0)).window(at(instant), ZoneInfo(zone))
    assert (window.start, window.end) == (at(start), at(end))


@given(instant=instants, zone=st.sampled_from(ZONES), hour=st.integers(0, 23))
def test_daily_windows_tile_time_without_gaps(instant: datetime, zone: str, hour: int) -> None:
    rule = DigestRule(at_local=time(hour, 30))
    tz = ZoneInfo(zone)
    window = rule.window(instant, tz)
    assert window.contains(instant)
    assert timedelta(hours=22) <= window.end - window.start <= timedelta(hours=26)
    assert rule.following(window, tz).start == window.end


def test_a_digest_rule_takes_exactly_one_kind_of_window() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DigestRule()
    with pytest.raises(ValueError, match="exactly one"):
        DigestRule(window_seconds=3600, at_local=time(9, 0))


def test_digest_ids_name_one_window_alike_everywhere() -> None:
    start = at("2026-03-01T10:00:00")
    same = digest_id("u1", "news", Channel.PUSH, start)
    assert same == digest_id("u1", "news", Channel.PUSH, start.astimezone(ZoneInfo("Asia/Tokyo")))
    others = {
        digest_id("u2", "news", Channel.PUSH, start),
        digest_id("u1", "sport", Channel.PUSH, start),
        digest_id("u1", "news", Channel.EMAIL, start),
        digest_id("u1", "news", Channel.PUSH, start + timedelta(hours=1)),
    }
    assert same not in others
    assert len(others) == 4


@pytest.mark.parametrize(
    ("count", "items", "title", "body"),
    [
        (1, [{"title": "A"}], "1 new notification", "A"),
        (2, [{"title": "A"}, {"body": "only a body"}], "2 new notifications", "A\nonly a body"),
        (12, [{"subject": f"s{n}"} for n in range(12)], "12 new notifications", None),
        (60, [{"title": "t"}] * 50, "60 new notifications", None),
    ],
)
def test_a_digest_without_a_template_lists_its_items(
    count: int, items: list[dict[str, str]], title: str, body: str | None
) -> None:
    got_title, got_body = default_digest_text(count, items)
    assert got_title == title
    if body is not None:
        assert got_body == body
    lines = got_body.split("\n")
    assert len(lines) == min(count, 10) + (1 if count > 10 else 0)
    if count > 10:
        assert lines[-1] == f"and {count - 10} more"
