"""Properties of quiet hours and of the channel decision, over any window, any IANA zone
and any instant, with instants drawn around each zone's real DST transitions (gaps and
folds) as often as anywhere else."""

from __future__ import annotations

import os
from datetime import UTC, datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from herald.domain import (
    ALL_CHANNELS,
    CategorySettings,
    Channel,
    Preferences,
    Priority,
    QuietHours,
    QuietHoursAction,
    Verdict,
    decide_channels,
)

ZONES = sorted(available_timezones() | {"UTC"})
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2060, 1, 1, tzinfo=UTC)
# HERALD_PROPERTY_EXAMPLES=5000 for a longer hunt.
EXAMPLES = int(os.environ.get("HERALD_PROPERTY_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def offset(instant: datetime, tz: ZoneInfo) -> timedelta:
    value = instant.astimezone(tz).utcoffset()
    assert value is not None
    return value


@lru_cache(maxsize=4096)
def transitions(name: str, year: int) -> tuple[datetime, ...]:
    """The zone's UTC-offset changes in a year, to the second (found by stepping six hours
    at a time and bisecting each change)."""
    tz = zone(name)
    found: list[datetime] = []
    at = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    step = timedelta(hours=6)
    while at < end:
        if offset(at, tz) != offset(at + step, tz):
            low, high = at, at + step
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if offset(middle, tz) == offset(low, tz):
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        at += step
    return tuple(found)


wall_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))
zone_names = st.sampled_from(ZONES)
anywhere = st.datetimes(
    min_value=EARLIEST.replace(tzinfo=None),
    max_value=LATEST.replace(tzinfo=None),
    timezones=st.just(UTC),
)


@st.composite
def windows(draw: st.DrawFn) -> QuietHours:
    start = draw(wall_times)
    end = draw(wall_times.filter(lambda t: t != start))
    return QuietHours(start, end)


@st.composite
def situations(draw: st.DrawFn) -> tuple[QuietHours, ZoneInfo, datetime]:
    """A window, a zone and an instant: anywhere, or within a day and a half of one of the
    zone's transitions with the window's edges at the wall times around it."""
    name = draw(zone_names)
    tz = zone(name)
    year = draw(st.integers(1971, 2058))
    near = transitions(name, year)
    if not near or draw(st.booleans()):
        return draw(windows()), tz, draw(anywhere)
    transition = draw(st.sampled_from(near))
    instant = transition + timedelta(seconds=draw(st.integers(-36 * 3600, 36 * 3600)))

    # Wall times counted on the clock as it read before the change, so that they include
    # the ones a spring-forward skips and the ones a fall-back repeats.
    before = offset(transition - timedelta(seconds=1), tz)

    def edge() -> time:
        wall = transition + before + timedelta(minutes=draw(st.integers(-150, 150)))
        return time(wall.hour, wall.minute)

    start = draw(st.one_of(st.builds(edge), wall_times))
    end = draw(st.one_of(st.builds(edge), wall_times))
    assume(start != end)
    return QuietHours(start, end), tz, instant


def free_time(window: QuietHours) -> timedelta:
    """How long the wall clock is outside the window each day."""
    day = datetime(2000, 1, 1)
    return (datetime.combine(day, window.start) - datetime.combine(day, window.end)) % timedelta(
        days=1
    )


@SETTINGS
@given(situation=situations(), fractions=st.lists(st.floats(0, 1), min_size=1, max_size=5))
# Found by this test: a fall-back to before the start ends the window at the transition
# (the window ran on to the end time's next occurrence, a minute late).
@example(
    situation=(
        QuietHours(time(0, 59), time(1, 1)),
        zone("Europe/Rome"),
        datetime(1971, 9, 25, 22, 59, 59, tzinfo=UTC),
    ),
    fractions=[0.5],
)
# A spring-forward over all of the day's time outside the window: quiet to the next day.
@example(
    situation=(
        QuietHours(time(2, 1), time(2, 0)),
        zone("America/Danmarkshavn"),
        datetime(1980, 4, 6, 2, 59, 59, tzinfo=UTC),
    ),
    fractions=[0.5],
)
@example(  # spring-forward over the end time: the window ends at the transition
    situation=(
        QuietHours(time(22, 0), time(2, 30)),
        zone("Europe/Berlin"),
        datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
    ),
    fractions=[0.5],
)
@example(  # a two-hour change (Antarctica/Troll goes from UTC+0 to UTC+2)
    situation=(
        QuietHours(time(0, 30), time(2, 30)),
        zone("Antarctica/Troll"),
        datetime(2026, 3, 29, 0, 45, tzinfo=UTC),
    ),
    fractions=[0.5],
)
def test_window_end_is_the_first_instant_outside_the_window(
    situation: tuple[QuietHours, ZoneInfo, datetime], fractions: list[float]
) -> None:
    window, tz, instant = situation
    end = window.window_end(instant, tz)
    assert end.utcoffset() == timedelta(0)
    assert end >= instant
    assert not window.is_quiet(end, tz), (window, tz, instant, end)
    if not window.is_quiet(instant, tz):
        assert end == instant
        return
    assert end > instant
    # At most a day of wall time plus the clock change in between (one hour nearly
    # everywhere; two in a few zones such as Antarctica/Troll).
    change = abs(offset(instant, tz) - offset(end, tz))
    limit = timedelta(hours=24) + max(timedelta(hours=1), change)
    if change and free_time(window) <= change:
        # The clocks sprang forward over the whole of that day's time outside the window
        # (e.g. 02:01-02:00 and 02:00 -> 03:00): it is quiet until the next day's end.
        limit += timedelta(hours=24)
    assert end - instant <= limit, (window, tz, instant, end)
    # Quiet all the way: at sampled points, and (to the second) just before the end.
    for fraction in fractions:
        between = instant + (end - instant) * fraction
        if instant <= between < end:
            assert window.is_quiet(between, tz), (window, tz, instant, end, between)
    just_before = end - timedelta(seconds=1)
    if just_before >= instant:
        assert window.is_quiet(just_before, tz), (window, tz, instant, end)


def test_window_ends_at_clock_changes() -> None:
    def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)

    # Rome, 26 Sep 1971: 01:00 CEST became 00:00 CET, before the 00:59 start.
    rome = QuietHours(time(0, 59), time(1, 1))
    assert rome.window_end(utc(1971, 9, 25, 22, 59, 59), zone("Europe/Rome")) == utc(
        1971, 9, 25, 23, 0
    )
    # Troll, 29 Mar 2026: 01:00 UTC+0 became 03:00 UTC+2, past the 02:30 end.
    troll = QuietHours(time(0, 30), time(2, 30))
    assert troll.window_end(utc(2026, 3, 29, 0, 45), zone("Antarctica/Troll")) == utc(
        2026, 3, 29, 1, 0
    )


@SETTINGS
@given(situation=situations())
def test_is_quiet_matches_the_local_wall_clock(
    situation: tuple[QuietHours, ZoneInfo, datetime],
) -> None:
    window, tz, instant = situation
    wall = instant.astimezone(tz).time()
    if window.start < window.end:
        expected = window.start <= wall < window.end
    else:
        expected = wall >= window.start or wall < window.end
    assert window.is_quiet(instant, tz) == expected


# -- the channel decision ------------------------------------------------------------------

channel_sets = st.sets(st.sampled_from(ALL_CHANNELS))
CATEGORY_NAMES = ("default", "marketing", "billing")


@st.composite
def categories(draw: st.DrawFn) -> CategorySettings:
    return CategorySettings(
        name=draw(st.sampled_from(CATEGORY_NAMES)),
        quiet_hours=draw(st.sampled_from(QuietHoursAction)),
        channels=tuple(sorted(draw(channel_sets.filter(bool)))),
    )


@st.composite
def preferences(draw: st.DrawFn) -> Preferences:
    flags = st.dictionaries(st.sampled_from(ALL_CHANNELS), st.booleans())
    return Preferences(
        channels=draw(flags),
        categories=draw(st.dictionaries(st.sampled_from(CATEGORY_NAMES), flags, max_size=3)),
        quiet_hours=draw(st.none() | windows()),
    )


@st.composite
def decisions_input(draw: st.DrawFn) -> dict[str, object]:
    now = draw(anywhere)
    send_at = draw(
        st.none()
        | st.builds(lambda s: now + timedelta(seconds=s), st.integers(-7 * 86400, 7 * 86400))
    )
    requested = draw(st.none() | channel_sets.filter(bool).map(lambda c: sorted(c)))
    return {
        "requested": requested,
        "category": draw(categories()),
        "preferences": draw(preferences()),
        "priority": draw(st.sampled_from(Priority)),
        "zone": zone(draw(zone_names)),
        "now": now,
        "send_at": send_at,
    }


@settings(max_examples=EXAMPLES, deadline=None)
@given(given_input=decisions_input())
def test_channel_decisions(given_input: dict[str, object]) -> None:
    requested = given_input["requested"]
    category = given_input["category"]
    prefs = given_input["preferences"]
    priority = given_input["priority"]
    tz = given_input["zone"]
    now = given_input["now"]
    send_at = given_input["send_at"]
    assert isinstance(category, CategorySettings)
    assert isinstance(prefs, Preferences)
    assert isinstance(tz, ZoneInfo)
    assert isinstance(now, datetime)
    assert send_at is None or isinstance(send_at, datetime)
    assert isinstance(priority, Priority)
    assert requested is None or isinstance(requested, list)

    decisions = decide_channels(
        requested=requested,
        category=category,
        preferences=prefs,
        priority=priority,
        zone=tz,
        now=now,
        send_at=send_at,
    )

    wanted = set(requested) if requested is not None else set(category.channels)
    channels = [d.channel for d in decisions]
    # Only (and every one of) the requested channels, once each.
    assert len(channels) == len(set(channels))
    assert set(channels) == wanted

    critical = priority == Priority.CRITICAL
    scheduled = send_at if send_at is not None and send_at > now else None
    base = scheduled or now
    quiet = prefs.quiet_hours is not None and prefs.quiet_hours.is_quiet(base, tz)
    for decision in decisions:
        channel: Channel = decision.channel
        enabled = prefs.channel_enabled(channel)
        opted_in = prefs.category_allows(category.name, channel)
        if not enabled:
            # A channel the user turned off is off, critical or not.
            assert decision.verdict == Verdict.SKIP
            continue
        if critical:
            # Critical bypasses category opt-outs and quiet hours: never skipped, and
            # deferred only to an explicit future send_at.
            assert decision.verdict != Verdict.SKIP, decision
            if scheduled is None:
                assert decision.verdict == Verdict.SEND
            else:
                assert decision.verdict == Verdict.DEFER
                assert decision.not_before == scheduled
            continue
        if not opted_in:
            assert decision.verdict == Verdict.SKIP
            continue
        if decision.verdict == Verdict.SKIP:
            assert quiet, decision
            assert category.quiet_hours == QuietHoursAction.DROP, decision
        if quiet and category.quiet_hours == QuietHoursAction.DEFER:
            assert decision.verdict == Verdict.DEFER
        if decision.verdict == Verdict.SEND:
            assert scheduled is None
            assert not quiet or category.quiet_hours == QuietHoursAction.IGNORE
        if decision.verdict == Verdict.DEFER:
            # Deferred only for quiet hours or a future send_at, and always to later.
            assert decision.not_before is not None
            assert decision.not_before > now
            assert (quiet and category.quiet_hours == QuietHoursAction.DEFER) or scheduled
            if quiet and category.quiet_hours == QuietHoursAction.DEFER:
                assert prefs.quiet_hours is not None
                assert decision.not_before == prefs.quiet_hours.window_end(base, tz)
                assert not prefs.quiet_hours.is_quiet(decision.not_before, tz)
            else:
                assert decision.not_before == scheduled
    for decision in decisions:
        if decision.verdict == Verdict.DEFER:
            assert decision.not_before is not None
            assert decision.not_before > now
        else:
            assert decision.not_before is None
