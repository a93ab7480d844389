from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from herald.domain import QuietHours, parse_wall_time

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "wall", "quiet"),
    [
        (("22:00", "07:00"), "23:30", True),
        (("22:00", "07:00"), "03:00", True),
        (("22:00", "07:00"), "07:00", False),
        (("22:00", "07:00"), "21:59", False),
        (("22:00", "07:00"), "22:00", True),
        (("13:00", "14:00"), "13:30", True),
        (("13:00", "14:00"), "14:00", False),
        (("13:00", "14:00"), "12:59", False),
    ],
)
def test_window_contains_wall_time(window: tuple[str, str], wall: str, quiet: bool) -> None:
    hours = QuietHours(parse_wall_time(window[0]), parse_wall_time(window[1]))
    assert hours.contains_wall_time(parse_wall_time(wall)) is quiet


def test_quiet_is_judged_in_the_users_zone() -> None:
    hours = QuietHours(time(22), time(7))
    instant = utc(2026, 6, 1, 21, 30)  # 23:30 in Berlin (CEST), 17:30 in New York
    assert hours.is_quiet(instant, BERLIN)
    assert not hours.is_quiet(instant, NEW_YORK)


def test_window_across_midnight_ends_next_morning() -> None:
    hours = QuietHours(time(22), time(7))
    instant = utc(2026, 6, 1, 21, 30)  # 23:30 Berlin
    assert hours.window_end(instant, BERLIN) == utc(2026, 6, 2, 5, 0)  # 07:00 CEST


def test_outside_the_window_the_end_is_now() -> None:
    hours = QuietHours(time(22), time(7))
    instant = utc(2026, 6, 1, 10, 0)
    assert hours.window_end(instant, BERLIN) == instant


def test_spring_forward_gap_ends_at_the_transition() -> None:
    # New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 never happens.
    hours = QuietHours(time(1), time(2, 30))
    instant = utc(2026, 3, 8, 6, 15)  # 01:15 EST
    end = hours.window_end(instant, NEW_YORK)
    assert end == utc(2026, 3, 8, 7, 0)  # 03:00 EDT, the first wall time past 02:30
    assert not hours.is_quiet(end, NEW_YORK)
    assert hours.is_quiet(end - timedelta(seconds=1), NEW_YORK)


def test_fall_back_ambiguous_end_uses_the_first_occurrence() -> None:
    # New York, 2026-11-01: 01:00-02:00 happens twice (EDT then EST).
    hours = QuietHours(time(0), time(1, 30))
    instant = utc(2026, 11, 1, 4, 30)  # 00:30 EDT
    assert hours.window_end(instant, NEW_YORK) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


def test_equal_start_and_end_is_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        QuietHours(time(8), time(8))


@pytest.mark.parametrize("text", ["25:00", "7:00", "07:60", "0700", "ab:cd", ""])
def test_bad_wall_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"HH:MM|between"):
        parse_wall_time(text)


KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14: its local dates run out first
END = datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK, KIRITIMATI], ids=str)
@pytest.mark.parametrize("before_end", [timedelta(0), timedelta(hours=3), timedelta(days=2)])
def test_quiet_hours_and_local_times_near_the_end_of_time_do_not_overflow(
    zone: ZoneInfo, before_end: timedelta
) -> None:
    """Instants whose local date would be past year 9999 (or whose next days would be)
    get an answer, never an OverflowError: the end of the window or the next occurrence
    where it can be represented, else the instant itself."""
    from herald.domain import next_occurrence

    at = END - before_end
    for start, end in (("22:00", "07:00"), ("00:00", "23:59"), ("13:00", "14:00")):
        hours = QuietHours(parse_wall_time(start), parse_wall_time(end))
        quiet = hours.is_quiet(at, zone)
        ends = hours.window_end(at, zone)
        assert ends >= at
        assert quiet or ends == at
    wall = parse_wall_time("09:00")
    found = next_occurrence(wall, zone, at)
    assert found >= at
    if found > at:
        assert found.astimezone(zone).time().replace(tzinfo=None) == wall


def test_a_window_that_ends_before_the_end_of_time_still_ends_at_its_end() -> None:
    hours = QuietHours(parse_wall_time("22:00"), parse_wall_time("07:00"))
    at = utc(9999, 12, 30, 22)  # 23:00 in Berlin, the window ends 06:00 UTC next day
    assert hours.window_end(at, BERLIN) == utc(9999, 12, 31, 6)
