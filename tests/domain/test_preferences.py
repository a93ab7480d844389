from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from herald.domain import (
    CategorySettings,
    Channel,
    Preferences,
    Priority,
    QuietHours,
    QuietHoursAction,
    Verdict,
    decide_channels,
)

UTC_ZONE = ZoneInfo("UTC")
NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NIGHT = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)
QUIET = QuietHours(time(22), time(7))


def decide(
    preferences: Preferences,
    *,
    category: CategorySettings | None = None,
    priority: Priority = Priority.NORMAL,
    now: datetime = NOON,
    requested: list[Channel] | None = None,
    send_at: datetime | None = None,
) -> dict[Channel, tuple[Verdict, str]]:
    decisions = decide_channels(
        requested=requested,
        category=category or CategorySettings("news"),
        preferences=preferences,
        priority=priority,
        zone=UTC_ZONE,
        now=now,
        send_at=send_at,
    )
    return {d.channel: (d.verdict, d.reason) for d in decisions}


def test_everything_on_by_default() -> None:
    assert {v for v, _ in decide(Preferences()).values()} == {Verdict.SEND}
    assert set(decide(Preferences())) == set(Channel)


def test_requested_channels_limit_the_fan_out() -> None:
    assert set(decide(Preferences(), requested=[Channel.EMAIL])) == {Channel.EMAIL}


def test_category_default_channels_apply_when_none_requested() -> None:
    category = CategorySettings("otp", channels=(Channel.SMS,))
    assert set(decide(Preferences(), category=category)) == {Channel.SMS}


def test_disabled_channel_is_skipped_even_for_critical() -> None:
    prefs = Preferences(channels={Channel.SMS: False})
    for priority in (Priority.NORMAL, Priority.CRITICAL):
        verdict, reason = decide(prefs, priority=priority)[Channel.SMS]
        assert verdict == Verdict.SKIP
        assert "disabled" in reason


def test_category_opt_out_is_skipped_unless_critical() -> None:
    prefs = Preferences(categories={"news": {Channel.EMAIL: False}})
    assert decide(prefs)[Channel.EMAIL][0] == Verdict.SKIP
    assert decide(prefs, priority=Priority.CRITICAL)[Channel.EMAIL][0] == Verdict.SEND


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (QuietHoursAction.DEFER, Verdict.DEFER),
        (QuietHoursAction.DROP, Verdict.SKIP),
        (QuietHoursAction.IGNORE, Verdict.SEND),
    ],
)
def test_quiet_hours_follow_the_category(action: QuietHoursAction, expected: Verdict) -> None:
    decisions = decide(
        Preferences(quiet_hours=QUIET), category=CategorySettings("news", action), now=NIGHT
    )
    assert {v for v, _ in decisions.values()} == {expected}


def test_deferral_ends_at_the_window_end() -> None:
    (decision,) = decide_channels(
        requested=[Channel.PUSH],
        category=CategorySettings("news"),
        preferences=Preferences(quiet_hours=QUIET),
        priority=Priority.NORMAL,
        zone=UTC_ZONE,
        now=NIGHT,
    )
    assert decision.not_before == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)


def test_critical_bypasses_quiet_hours() -> None:
    decisions = decide(Preferences(quiet_hours=QUIET), priority=Priority.CRITICAL, now=NIGHT)
    assert {v for v, _ in decisions.values()} == {Verdict.SEND}


def test_send_at_in_the_future_defers_until_then() -> None:
    later = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
    (decision,) = decide_channels(
        requested=[Channel.EMAIL],
        category=CategorySettings("news"),
        preferences=Preferences(),
        priority=Priority.NORMAL,
        zone=UTC_ZONE,
        now=NOON,
        send_at=later,
    )
    assert (decision.verdict, decision.not_before) == (Verdict.DEFER, later)


def test_send_at_inside_quiet_hours_waits_for_the_window_end() -> None:
    at_night = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)
    (decision,) = decide_channels(
        requested=[Channel.EMAIL],
        category=CategorySettings("news"),
        preferences=Preferences(quiet_hours=QUIET),
        priority=Priority.NORMAL,
        zone=UTC_ZONE,
        now=NOON,
        send_at=at_night,
    )
    assert decision.not_before == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
