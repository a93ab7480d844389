"""User preferences, category settings, and the decision of which channels a notification uses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from herald.domain.channels import (
    ALL_CHANNELS,
    DEFAULT_POLICY,
    Channel,
    DeliveryPolicy,
    Priority,
    QuietHoursAction,
)
from herald.domain.quiet_hours import QuietHours
from herald.domain.shaping import DigestRule, FrequencyCap
from herald.domain.tracking import EmailTracking


@dataclass(slots=True)
class Preferences:
    channels: dict[Channel, bool] = field(default_factory=dict)
    categories: dict[str, dict[Channel, bool]] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None

    def channel_enabled(self, channel: Channel) -> bool:
        return self.channels.get(channel, True)

    def category_allows(self, category: str, channel: Channel) -> bool:
        return self.categories.get(category, {}).get(channel, True)


@dataclass(frozen=True, slots=True)
class CategorySettings:
    name: str
    quiet_hours: QuietHoursAction = QuietHoursAction.DEFER
    channels: tuple[Channel, ...] = ALL_CHANNELS
    policy: Mapping[Channel, DeliveryPolicy] = field(default_factory=dict)
    # Fold this category's notifications into one delivery per window, per channel.
    digest: Mapping[Channel, DigestRule] = field(default_factory=dict)
    # At most N of this category's deliveries per window, per user and channel.
    caps: Mapping[Channel, FrequencyCap] = field(default_factory=dict)
    # Per channel, over a cap: folded into this digest rather than deferred.
    over_cap_digest: Mapping[Channel, DigestRule] = field(default_factory=dict)
    # Email open pixel and click redirects.
    tracking: EmailTracking = field(default_factory=EmailTracking)

    def policy_for(self, channel: Channel) -> DeliveryPolicy:
        return self.policy.get(channel, DEFAULT_POLICY[channel])


def default_category(name: str) -> CategorySettings:
    """An unknown category behaves as the defaults: defer in quiet hours, all channels."""
    return CategorySettings(name=name)


class Verdict(StrEnum):
    SEND = "send"
    DEFER = "defer"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class ChannelDecision:
    channel: Channel
    verdict: Verdict
    reason: str = ""
    not_before: datetime | None = None


def decide_channels(
    *,
    requested: Iterable[Channel] | None,
    category: CategorySettings,
    preferences: Preferences,
    priority: Priority,
    zone: ZoneInfo,
    now: datetime,
    send_at: datetime | None = None,
) -> list[ChannelDecision]:
    """Which channels a notification goes to, and when.

    requested (or the category's default channels) ∩ enabled by the user ∩ allowed by the
    category preference. `critical` bypasses category opt-outs and quiet hours, never a
    channel the user turned off. Whether a channel has an address or an active device is
    decided later, per target.
    """
    wanted = tuple(requested) if requested is not None else category.channels
    critical = priority == Priority.CRITICAL
    not_before = send_at if send_at is not None and send_at > now else None
    quiet_until = _quiet_until(preferences.quiet_hours, zone, not_before or now)
    decisions = []
    for channel in ALL_CHANNELS:
        if channel not in wanted:
            continue
        if not preferences.channel_enabled(channel):
            decisions.append(ChannelDecision(channel, Verdict.SKIP, "channel disabled by user"))
        elif not critical and not preferences.category_allows(category.name, channel):
            decisions.append(
                ChannelDecision(channel, Verdict.SKIP, f"category {category.name!r} opted out")
            )
        elif critical or quiet_until is None or category.quiet_hours == QuietHoursAction.IGNORE:
            decisions.append(_send_or_schedule(channel, not_before, "send_at"))
        elif category.quiet_hours == QuietHoursAction.DROP:
            decisions.append(ChannelDecision(channel, Verdict.SKIP, "quiet hours (dropped)"))
        else:
            decisions.append(ChannelDecision(channel, Verdict.DEFER, "quiet hours", quiet_until))
    return decisions


def _quiet_until(window: QuietHours | None, zone: ZoneInfo, at: datetime) -> datetime | None:
    if window is None or not window.is_quiet(at, zone):
        return None
    return window.window_end(at, zone)


def _send_or_schedule(
    channel: Channel, not_before: datetime | None, reason: str
) -> ChannelDecision:
    if not_before is None:
        return ChannelDecision(channel, Verdict.SEND)
    return ChannelDecision(channel, Verdict.DEFER, reason, not_before)
