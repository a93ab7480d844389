"""Traffic shaping per user: frequency caps and digest windows. Pure window arithmetic; the
storage layer does the counting and the folding atomically."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from herald.domain.channels import Channel
from herald.domain.quiet_hours import next_occurrence

_DIGEST_NAMESPACE = uuid.UUID("0b7f3c52-8f7e-4d55-a8a1-4f0d2f3e9c61")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A day is 23 to 25 hours long; 26 hours before a daily occurrence always holds the one before.
_LONGEST_DAY = timedelta(hours=26)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def fixed_window(at: datetime, seconds: int) -> Window:
    """The window of `seconds` containing `at`, aligned to the Unix epoch (so every process
    computes the same boundaries)."""
    elapsed = int((at - _EPOCH).total_seconds())
    start = _EPOCH + timedelta(seconds=elapsed - elapsed % seconds)
    return Window(start, start + timedelta(seconds=seconds))


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `limit` deliveries per `window_seconds` (one per notification and channel,
    however many devices it reaches)."""

    limit: int
    window_seconds: int

    def window(self, at: datetime) -> Window:
        return fixed_window(at, self.window_seconds)


@dataclass(frozen=True, slots=True)
class DigestRule:
    """Fold a category's notifications on one channel into one delivery per window: either
    fixed windows of `window_seconds`, or daily windows closing at `at_local` in the
    recipient's own time zone. `template` renders the digest (see digest_variables)."""

    window_seconds: int | None = None
    at_local: time | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if (self.window_seconds is None) == (self.at_local is None):
            raise ValueError("a digest needs exactly one of window_seconds and at_local")

    def window(self, at: datetime, zone: ZoneInfo) -> Window:
        """The window an item arriving at `at` belongs to (a window is [start, end))."""
        if self.window_seconds is not None:
            return fixed_window(at, self.window_seconds)
        assert self.at_local is not None
        end = next_occurrence(self.at_local, zone, at + timedelta(microseconds=1))
        return Window(next_occurrence(self.at_local, zone, end - _LONGEST_DAY), end)

    def following(self, window: Window, zone: ZoneInfo) -> Window:
        return self.window(window.end, zone)


@dataclass(frozen=True, slots=True)
class CapRule:
    """A cap and what it counts: every non-critical delivery on the channel (category None)
    or only one category's."""

    cap: FrequencyCap
    category: str | None = None


def digest_id(user_id: str, category: str, channel: Channel, window_start: datetime) -> str:
    """Deterministic, so every router names a window alike and the unique key does the rest."""
    key = f"{user_id}\x1f{category}\x1f{channel}\x1f{window_start.astimezone(UTC).isoformat()}"
    return "dg_" + uuid.uuid5(_DIGEST_NAMESPACE, key).hex


def folded_reason(digest: str) -> str:
    """The reason a folded delivery carries: which digest it went into."""
    return f"folded into digest {digest}"


@dataclass(frozen=True, slots=True)
class DigestFold:
    """Fold one notification's copy on one channel into the user's digest window."""

    notification_id: str
    user_id: str
    category: str
    channel: Channel
    rule: DigestRule
    zone: ZoneInfo
    at: datetime
    delivery_ids: tuple[str, ...]
    item: dict[str, Any]

    def window(self) -> Window:
        return self.rule.window(self.at, self.zone)


@dataclass(frozen=True, slots=True)
class CapClaim:
    """Count one notification's copy on one channel against the caps that apply; over them,
    `overflow` says where it goes (None: deferred to the first window with room that is not
    in the user's quiet hours)."""

    notification_id: str
    user_id: str
    channel: Channel
    rules: tuple[CapRule, ...]
    at: datetime
    delivery_ids: tuple[str, ...]
    overflow: DigestFold | None = None
    # When a deferred copy may go out at the earliest: pushes a time out of quiet hours.
    allowed_from: Callable[[datetime], datetime] = lambda at: at


MAX_DIGEST_LINES = 10


def digest_variables(
    category: str, channel: Channel, window: Window, items: list[dict[str, Any]], count: int
) -> dict[str, Any]:
    """What a digest template gets as `digest`: `notifications` (the first of them, in
    arrival order, each with its rendered title/body/subject/text and data) and the full
    `count`. (Not `items`: in a template `digest.items` would be the dict method.)"""
    return {
        "category": category,
        "channel": channel.value,
        "count": count,
        "notifications": items,
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
    }


def default_digest_text(count: int, items: list[dict[str, Any]]) -> tuple[str, str]:
    """Title and body of a digest that has no template of its own."""
    title = "1 new notification" if count == 1 else f"{count} new notifications"
    lines = [_headline(item) for item in items[:MAX_DIGEST_LINES]]
    if count > len(lines):
        lines.append(f"and {count - len(lines)} more")
    return title, "\n".join(lines)


def _headline(item: dict[str, Any]) -> str:
    for key in ("title", "subject", "body", "text"):
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return "(no text)"
