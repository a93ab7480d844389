"""Frequency caps and digests.

Both are decided inside the routing transaction, after the deliveries are inserted, and only
for deliveries that transaction inserted: a replayed or raced routing counts nothing twice.

- A cap slot is one conditional upsert on (user, channel, scope, window): `used + 1` only
  while `used < limit`. Two routers racing for the last slot are serialised on that row;
  exactly one gets it.
- A digest window is one row with a unique key (user, category, channel, window start),
  folded into by an upsert that only counts while the window is `open`. Closing takes the
  same row lock, so an item either lands before the close (and is in the digest) or sees the
  window closed and goes to the next one: never lost, never in two digests.

Work is done in user order so that concurrent routers lock rows in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.clock import Clock
from herald.domain import (
    CapClaim,
    CapRule,
    Channel,
    DeliveryState,
    DigestFold,
    FrequencyCap,
    Window,
    digest_id,
    folded_reason,
)
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.repository import Repository

# How many windows ahead a capped notification may go before it is skipped.
MAX_CAP_WINDOWS = 48
# A digest window found closed (its close raced the fold) moves on at most this often.
MAX_DIGEST_TRIES = 3
# A digest carries at most this many items in full; `count` always has the total.
MAX_DIGEST_ITEMS = 50
OPEN, CLOSED = "open", "closed"


@dataclass(frozen=True, slots=True)
class ShapingChange:
    """What shaping did to a delivery the planner queued or deferred."""

    state: DeliveryState
    reason: str
    due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClosedDigest:
    id: str
    user_id: str
    category: str
    channel: Channel
    template: str | None
    window: Window
    items: list[dict[str, Any]]
    count: int


def caps_by_channel(rows: Iterable[Any]) -> dict[Channel, FrequencyCap]:
    """The channel-wide caps, from rows of frequency_caps (SQLAlchemy's or native)."""
    return {Channel(r.channel): FrequencyCap(r.cap_limit, r.window_seconds) for r in rows}


class Shaping:
    """The shaping statements run inside other repositories' transactions: applied while
    routing, undone by a cancel, closed by the scheduler."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self.dialect = database.dialect

    @property
    def clock(self) -> Clock:
        return self.db.clock

    async def channel_caps(self, db: AsyncConnection) -> dict[Channel, FrequencyCap]:
        return caps_by_channel(await db.execute(sa.select(t.frequency_caps)))

    async def apply(
        self,
        db: AsyncConnection,
        folds: Sequence[DigestFold],
        claims: Sequence[CapClaim],
        inserted: set[str],
    ) -> dict[str, ShapingChange]:
        """Fold and count what this transaction inserted; returns the deliveries whose state
        shaping changed from what the planner wrote."""
        changes: dict[str, ShapingChange] = {}
        work: list[DigestFold | CapClaim] = [
            *(f for f in folds if inserted.issuperset(f.delivery_ids)),
            *(c for c in claims if inserted.issuperset(c.delivery_ids)),
        ]
        work.sort(key=lambda item: (item.user_id, item.channel))  # stable: arrival order
        for item in work:
            if isinstance(item, DigestFold):
                folded = await self._fold(db, item)
                if folded.moved:  # the planned window closed meanwhile: name the one it is in
                    change = ShapingChange(DeliveryState.DIGESTED, folded_reason(folded.id))
                    changes.update(dict.fromkeys(item.delivery_ids, change))
            else:
                change_or_none = await self._claim(db, item)
                if change_or_none is not None:
                    changes.update(dict.fromkeys(item.delivery_ids, change_or_none))
        return changes

    async def _fold(self, db: AsyncConnection, fold: DigestFold) -> _Folded:
        window = fold.window()
        for attempt in range(MAX_DIGEST_TRIES):
            key = digest_id(fold.user_id, fold.category, fold.channel, window.start)
            if await self._fold_into(db, key, fold, window):
                return _Folded(key, moved=attempt > 0)
            window = fold.rule.following(window, fold.zone)
        raise RuntimeError(f"digest windows for {fold.user_id} keep closing under the fold")

    async def _fold_into(
        self, db: AsyncConnection, key: str, fold: DigestFold, window: Window
    ) -> bool:
        d = t.digests.c
        now = self.clock.now()
        counted = await db.execute(
            self.dialect.insert(t.digests)
            .values(
                id=key,
                user_id=fold.user_id,
                category=fold.category,
                channel=fold.channel.value,
                window_start=window.start,
                window_end=window.end,
                template=fold.rule.template,
                state=OPEN,
                item_count=1,
                created_at=now,
            )
            .on_conflict_do_update(
                index_elements=["id"],  # digest_id() of the window: its only unique key
                set_={"item_count": d.item_count + 1},
                where=d.state == OPEN,
            )
            .returning(d.item_count)
        )
        position = counted.scalar()
        if position is None:
            return False
        await db.execute(
            self.dialect.insert(t.digest_items)
            .values(
                digest_id=key,
                notification_id=fold.notification_id,
                position=position,
                payload=fold.item,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["digest_id", "notification_id"])
        )
        return True

    async def _claim(self, db: AsyncConnection, claim: CapClaim) -> ShapingChange | None:
        at = claim.at
        for _ in range(MAX_CAP_WINDOWS):
            full_until = await self._reserve_all(db, claim, at)
            if full_until is None:
                return (
                    None
                    if at == claim.at
                    else ShapingChange(DeliveryState.DEFERRED, "frequency cap", at)
                )
            if claim.overflow is not None:
                digest = await self._fold(db, claim.overflow)
                return ShapingChange(DeliveryState.DIGESTED, folded_reason(digest.id))
            at = claim.allowed_from(full_until)
        return ShapingChange(
            DeliveryState.SKIPPED, f"frequency cap: no room in the next {MAX_CAP_WINDOWS} windows"
        )

    async def _reserve_all(
        self, db: AsyncConnection, claim: CapClaim, at: datetime
    ) -> datetime | None:
        """Take a slot under every cap at `at`; if one is full, give back the others and
        return when that cap's window ends."""
        taken: list[tuple[CapRule, Window]] = []
        for rule in claim.rules:
            window = rule.cap.window(at)
            if not await self._reserve(db, claim, rule, window):
                for held, held_window in taken:
                    await self._release(db, claim, held, held_window)
                return window.end
            taken.append((rule, window))
        return None

    async def _reserve(
        self, db: AsyncConnection, claim: CapClaim, rule: CapRule, window: Window
    ) -> bool:
        c = t.frequency_counters.c
        reserved = await db.execute(
            self.dialect.insert(t.frequency_counters)
            .values(
                user_id=claim.user_id,
                channel=claim.channel.value,
                scope=rule.category or "",
                window_start=window.start,
                window_end=window.end,
                used=1,
            )
            .on_conflict_do_update(
                index_elements=["user_id", "channel", "scope", "window_start"],
                set_={"used": c.used + 1},
                where=c.used < rule.cap.limit,
            )
            .returning(c.used)
        )
        return reserved.first() is not None

    async def _release(
        self, db: AsyncConnection, claim: CapClaim, rule: CapRule, window: Window
    ) -> None:
        c = t.frequency_counters.c
        await db.execute(
            t.frequency_counters.update()
            .where(
                c.user_id == claim.user_id,
                c.channel == claim.channel.value,
                c.scope == (rule.category or ""),
                c.window_start == window.start,
            )
            .values(used=c.used - 1)
        )

    async def unfold(
        self, db: AsyncConnection, notification_ids: sa.ScalarSelect[Any]
    ) -> list[tuple[str, str]]:
        """Take cancelled notifications out of the digests that are still open (a closed one
        has gone out). The open windows stay locked until commit, so a close cannot take
        an item being removed. Returns the (notification id, channel) pairs removed."""
        d, i = t.digests.c, t.digest_items.c
        mine = i.notification_id.in_(notification_ids)
        removed_per_digest = (
            sa.select(sa.func.count()).where(i.digest_id == d.id, mine).scalar_subquery()
        )
        opened = list(
            await db.execute(
                t.digests.update()
                .where(d.state == OPEN, d.id.in_(sa.select(i.digest_id).where(mine)))
                .values(item_count=d.item_count - removed_per_digest)
                .returning(d.id, d.channel)
            )
        )
        if not opened:
            return []
        channels = {row.id: row.channel for row in opened}
        removed = await db.execute(
            t.digest_items.delete()
            .where(mine, i.digest_id.in_(list(channels)))
            .returning(i.notification_id, i.digest_id)
        )
        return [(r.notification_id, channels[r.digest_id]) for r in removed]

    async def close_due_digests(self, db: AsyncConnection, limit: int) -> list[ClosedDigest]:
        """Close the windows that have ended (each by one scheduler: SKIP LOCKED) and
        collect their items; the caller turns each into a notification in the same
        transaction."""
        d = t.digests.c
        now = self.clock.now()
        due = self.dialect.lock_skip(
            sa.select(d.id)
            .where(d.state == OPEN, d.window_end <= now)
            .order_by(d.window_end)
            .limit(limit)
        )
        closed = list(
            await db.execute(
                t.digests.update()
                .where(d.id.in_(due.scalar_subquery()), d.state == OPEN)
                .values(state=CLOSED, closed_at=now)
                .returning(*t.digests.c)
            )
        )
        if not closed:
            return []
        items = await self._live_items(db, [row.id for row in closed])
        return [
            ClosedDigest(
                id=row.id,
                user_id=row.user_id,
                category=row.category,
                channel=Channel(row.channel),
                template=row.template,
                window=Window(row.window_start, row.window_end),
                items=items.get(row.id, [])[:MAX_DIGEST_ITEMS],
                count=len(items.get(row.id, [])),
            )
            for row in closed
        ]

    async def _live_items(
        self, db: AsyncConnection, digest_ids: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Each digest's items in arrival order (cancelled ones were taken out)."""
        i = t.digest_items.c
        rows = await db.execute(
            sa.select(i.digest_id, i.payload)
            .where(i.digest_id.in_(digest_ids))
            .order_by(i.digest_id, i.position)
        )
        items: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            items.setdefault(row.digest_id, []).append(dict(row.payload))
        return items

    async def mark_digest_notifications(
        self, db: AsyncConnection, notification_ids: dict[str, str]
    ) -> None:
        if notification_ids:
            await db.execute(
                t.digests.update()
                .where(t.digests.c.id == sa.bindparam("digest"))
                .values(notification_id=sa.bindparam("notification")),
                [{"digest": k, "notification": v} for k, v in notification_ids.items()],
            )

    async def forget_expired(self, db: AsyncConnection, cutoff: datetime) -> None:
        """Counters whose window is over, and closed digests (with their items) that ended
        before `cutoff`."""
        await db.execute(
            t.frequency_counters.delete().where(
                t.frequency_counters.c.window_end < self.clock.now() - timedelta(hours=1)
            )
        )
        old = sa.select(t.digests.c.id).where(
            t.digests.c.state == CLOSED, t.digests.c.window_end < cutoff
        )
        await db.execute(t.digest_items.delete().where(t.digest_items.c.digest_id.in_(old)))
        await db.execute(t.digests.delete().where(t.digests.c.id.in_(old)))


class ShapingRepository(Repository):
    """Channel-wide caps (configuration), cap usage and a user's digests, for the API."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.shaping = Shaping(database)

    async def put_frequency_cap(self, channel: Channel, cap: FrequencyCap) -> bool:
        """Set the cap for every non-critical delivery on a channel; True when new."""
        c = t.frequency_caps.c
        async with self.db.transaction() as db:
            existed = await db.scalar(sa.select(c.channel).where(c.channel == channel.value))
            values = {
                "cap_limit": cap.limit,
                "window_seconds": cap.window_seconds,
                "updated_at": self.clock.now(),
            }
            await db.execute(
                self.dialect.insert(t.frequency_caps)
                .values(channel=channel.value, **values)
                .on_conflict_do_update(index_elements=["channel"], set_=values)
            )
        return existed is None

    async def delete_frequency_cap(self, channel: Channel) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(
                t.frequency_caps.delete().where(t.frequency_caps.c.channel == channel.value)
            )
        return bool(result.rowcount)

    async def frequency_caps(self) -> dict[Channel, FrequencyCap]:
        async with self.db.reading() as db:
            return await self.shaping.channel_caps(db)

    async def cap_usage(
        self, user_id: str, channel: Channel, scope: str = ""
    ) -> list[tuple[datetime, int]]:
        """(window start, deliveries counted) for a user's channel, oldest first."""
        c = t.frequency_counters.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(c.window_start, c.used)
                .where(c.user_id == user_id, c.channel == channel.value, c.scope == scope)
                .order_by(c.window_start)
            )
        return [(r.window_start, r.used) for r in rows]

    async def list_digests(self, user_id: str) -> list[dict[str, Any]]:
        d = t.digests.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(t.digests).where(d.user_id == user_id).order_by(d.window_start)
            )
        return [dict(row._mapping) for row in rows]


@dataclass(frozen=True, slots=True)
class _Folded:
    id: str
    moved: bool  # into a later window than planned, the planned one having closed
