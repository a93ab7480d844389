"""Quiet hours: a local-time window, possibly across midnight, in the user's IANA time zone.

A window [start, end) is compared against the user's wall-clock time. Instants are UTC.
DST: an end time that does not exist on a spring-forward day ends the window at the first
instant whose wall time is past it (the transition), unless that instant is inside the
window again (the gap swallowed all of the day's time outside it), when the window runs to
the next day's end; an end time that occurs twice on a fall-back day ends it at the first
occurrence after now; a fall-back that sets the clock to before the start ends the window
at the transition.

Near the end of representable time (year 9999) a local date or the days after it may not
exist: days that cannot be represented are left out of the search, and where no answer
can be represented at all, no local-time rule applies (the instant itself is the answer),
so no input raises OverflowError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# Local conversions of instants up to here never overflow (UTC offsets are under 26 h).
_LAST_SAFE = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def contains_wall_time(self, wall: time) -> bool:
        if self.crosses_midnight:
            return wall >= self.start or wall < self.end
        return self.start <= wall < self.end

    def is_quiet(self, instant: datetime, zone: ZoneInfo) -> bool:
        try:
            wall = instant.astimezone(zone).time().replace(tzinfo=None)
        except OverflowError:  # its local date is past year 9999
            return False
        return self.contains_wall_time(wall)

    def window_end(self, instant: datetime, zone: ZoneInfo) -> datetime:
        """The first instant at or after `instant` that is outside the window (UTC).

        Quiet or not changes only where the wall clock reaches the end time or where it
        jumps (a UTC offset change), so the answer is the earliest of those instants that
        is outside the window. A jump matters both ways: a spring-forward over the end
        time ends the window at the transition, and a fall-back to before the start time
        ends it at the transition too, earlier than the end time's next occurrence.
        """
        if not self.is_quiet(instant, zone):
            return instant
        local_date = instant.astimezone(zone).date()
        candidates: list[datetime] = []
        for day in range(3):
            for fold in (0, 1):
                at = _instant(local_date, day, self.end, zone, fold)
                if at is not None and at > instant:
                    candidates.append(at)
        horizon = _instant(local_date, 3, time(), zone, 0) or _LAST_SAFE
        candidates.extend(_offset_changes(zone, instant, min(horizon, _LAST_SAFE)))
        return min((at for at in candidates if not self.is_quiet(at, zone)), default=instant)


def _instant(local_date: date, days: int, wall: time, zone: ZoneInfo, fold: int) -> datetime | None:
    """The UTC instant of `wall` on the local date `days` after `local_date`, or None when
    that cannot be represented."""
    try:
        naive = datetime.combine(local_date + timedelta(days=days), wall)
        return naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
    except OverflowError:
        return None


def _offset_changes(zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """The instants in (after, until] at which the zone's UTC offset changes, to the second
    (tz data changes offsets on whole seconds). Steps an hour at a time, then bisects."""
    changes: list[datetime] = []
    step = timedelta(hours=1)
    low = after
    while low < until:
        high = min(low + step, until)
        if _offset(low, zone) != _offset(high, zone):
            earlier, later = math.floor(low.timestamp()), math.floor(high.timestamp()) + 1
            # Invariant: the offset at `earlier` is the one at `low`; at `later`, it is not.
            while later - earlier > 1:
                middle = (earlier + later) // 2
                if _offset(datetime.fromtimestamp(middle, UTC), zone) == _offset(low, zone):
                    earlier = middle
                else:
                    later = middle
            change = datetime.fromtimestamp(later, UTC)
            if change > after:
                changes.append(change)
        low = high
    return changes


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def next_occurrence(wall: time, zone: ZoneInfo, after: datetime) -> datetime:
    """The first instant at or after `after` whose local wall time is `wall` (UTC).

    On a fall-back day the first of the two occurrences counts; on a spring-forward day a
    wall time that does not exist is taken as the first instant past it (the transition).
    """
    try:
        local_date = after.astimezone(zone).date()
    except OverflowError:  # past the last local date: no local time applies
        return after
    for day in range(3):
        readings = [_instant(local_date, day, wall, zone, fold) for fold in (0, 1)]
        instants = sorted({i for i in readings if i is not None})
        if not instants:
            return after  # the day is past the last representable one
        exact = [i for i in instants if i.astimezone(zone).time().replace(tzinfo=None) == wall]
        if exact:
            found = next((i for i in exact if i >= after), None)
        else:  # inside a DST gap: the transition, searched between the two readings
            found = _first_wall_at_or_past(wall, zone, instants[0], instants[-1])
            found = found if found >= after else None
        if found is not None:
            return found
    raise ValueError(f"no occurrence of {wall} in {zone} after {after}")  # pragma: no cover


def _first_wall_at_or_past(wall: time, zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).time().replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def parse_wall_time(text: str) -> time:
    """'HH:MM' (24 h) to a time; raises ValueError with a message for anything else."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError(f"time must be HH:MM (24-hour), got {text!r}")
    hour, minute = int(parts[0]), int(parts[1])
    if hour > 23 or minute > 59:
        raise ValueError(f"time must be between 00:00 and 23:59, got {text!r}")
    return time(hour, minute)
