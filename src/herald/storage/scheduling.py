"""The scheduler's sweeps: due deferrals, expired leases, lost messages, closing digests,
housekeeping."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import DeliveryEvent, DeliveryPolicy, DeliveryState, NotificationState
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.guards import LEASE_EXPIRED_REQUEUE, LEASE_EXPIRED_UNKNOWN, RELEASE_DUE, Guard
from herald.storage.native import ANYTHING_DUE_SQL
from herald.storage.records import Released
from herald.storage.repository import Repository
from herald.storage.rows import digest_notification, event_row
from herald.storage.shaping import Shaping
from herald.storage.statements import insert_notifications, told_state

S = DeliveryState


class SchedulingRepository(Repository):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.shaping = Shaping(database)

    async def anything_due(self, within_seconds: float = 0.0) -> bool:
        """Would a pass change anything now (or within the next `within_seconds`)? One
        read, on the driver, with the pass's own conditions: a quiet fleet's scheduler asks
        this instead of running the pass's three to five transactions. An outage answers
        yes, so the pass runs and meets it as it always has (logged, tried again next
        interval)."""
        return await self._probe_due(ANYTHING_DUE_SQL, within_seconds)

    async def release_due(self, limit: int) -> list[Released]:
        """Deferred deliveries whose time has come go back to `queued`; the caller
        publishes them. Each is released by one scheduler (a single UPDATE, and on
        PostgreSQL SKIP LOCKED so schedulers do not queue behind each other)."""
        now = self.clock.now()
        due = self.dialect.lock_skip(
            sa.select(t.deliveries.c.id)
            .where(RELEASE_DUE.holds(t.deliveries.c.state), t.deliveries.c.due_at <= now)
            .order_by(t.deliveries.c.due_at)
            .limit(limit)
        )
        return await self._transition_returning(due, RELEASE_DUE, S.QUEUED, {"reason": "due"})

    async def expire_leases(self, limit: int) -> tuple[list[Released], int]:
        """Deliveries whose worker died mid-send. at_least_once goes back to the queue;
        at_most_once becomes unknown and is never sent again."""
        now = self.clock.now()
        expired = (
            LEASE_EXPIRED_REQUEUE.holds(t.deliveries.c.state),
            t.deliveries.c.lease_until < now,
        )

        def select(policy: DeliveryPolicy) -> sa.Select[Any]:
            return self.dialect.lock_skip(
                sa.select(t.deliveries.c.id)
                .where(*expired, t.deliveries.c.policy == policy.value)
                .limit(limit)
            )

        requeued = await self._transition_returning(
            select(DeliveryPolicy.AT_LEAST_ONCE),
            LEASE_EXPIRED_REQUEUE,
            S.QUEUED,
            {"reason": "lease expired"},
        )
        unknown = await self._transition_returning(
            select(DeliveryPolicy.AT_MOST_ONCE),
            LEASE_EXPIRED_UNKNOWN,
            S.UNKNOWN,
            {"reason": "lease expired; at_most_once, not sent again"},
        )
        return requeued, len(unknown)

    async def stale_queued(self, older_than: datetime, limit: int) -> list[Released]:
        """Queued deliveries nobody has touched since `older_than`: their bus message was
        lost (the in-process bus across a restart). Republishing is safe: the claim is
        idempotent."""
        async with self.db.transaction() as db:
            rows = await db.execute(
                t.deliveries.update()
                .where(
                    t.deliveries.c.id.in_(
                        sa.select(t.deliveries.c.id)
                        .where(
                            t.unsent_in(S.QUEUED),
                            t.deliveries.c.updated_at <= older_than,
                        )
                        .limit(limit)
                    )
                )
                .values(updated_at=self.clock.now())
                .returning(
                    t.deliveries.c.id,
                    t.deliveries.c.user_id,
                    t.deliveries.c.channel,
                    t.deliveries.c.priority,
                )
            )
            return [Released(r.id, r.user_id, r.channel, r.priority) for r in rows]

    async def stale_notifications(
        self, older_than: datetime, limit: int
    ) -> list[tuple[str, str, str]]:
        """Notifications the relay published that are still not routed, accepted before
        `older_than`: (id, user id, priority), up to `limit`.

        Each lane is read from its sweep position (schema.sweep_positions) up to the
        relay's, in relay order, in pages of `limit` and at most SWEEP_PAGES of them. The
        position then moves over the leading notifications that are settled (routed,
        cancelled or set aside) and stops before the first one that is not, young or
        stale: the next sweep reads what was published since that one, not every
        notification ever accepted. The reads take no lock; two schedulers sweeping at
        once republish the same notifications (the router's deterministic ids absorb
        that), and a position only ever moves forward."""
        found: list[tuple[str, str, str]] = []
        moved: dict[int, Position] = {}
        async with self.db.reading() as db:
            for lane, start, end in await _sweep_ranges(db):
                if len(found) >= limit:
                    break
                position, stale = await _sweep_lane(
                    db, lane, (start, end), older_than, page=limit, wanted=limit - len(found)
                )
                found += stale
                if position != start:
                    moved[lane] = position
        if moved:
            await self._move_sweep_positions(moved)
        return found

    async def _move_sweep_positions(self, moved: dict[int, Position]) -> None:
        s = t.sweep_positions.c
        async with self.db.transaction() as db:
            for lane, (xid, seq) in sorted(moved.items()):
                await db.execute(
                    t.sweep_positions.update()
                    .where(
                        s.lane == lane,
                        sa.tuple_(s.position_xid, s.position_seq)
                        < sa.tuple_(sa.literal(xid), sa.literal(seq)),
                    )
                    .values(position_xid=xid, position_seq=seq)
                )

    async def _transition_returning(
        self, ids: sa.Select[Any], guard: Guard, new: DeliveryState, detail: dict[str, Any]
    ) -> list[Released]:
        now = self.clock.now()
        async with self.db.transaction() as db:
            rows = list(
                await db.execute(
                    t.deliveries.update()
                    .where(
                        t.deliveries.c.id.in_(ids.scalar_subquery()),
                        guard.holds(t.deliveries.c.state),
                    )
                    .values(state=new.value, lease_until=None, updated_at=now)
                    .returning(
                        t.deliveries.c.id,
                        t.deliveries.c.user_id,
                        t.deliveries.c.channel,
                        t.deliveries.c.notification_id,
                        t.deliveries.c.priority,
                        t.deliveries.c.attempts,
                        t.deliveries.c.claimed_at,
                    )
                )
            )
            await self.dialect.insert_events(
                db,
                [
                    event_row(DeliveryEvent(r.id, r.notification_id, new, now, _attempt(r, detail)))
                    for r in rows
                ],
            )
        return [Released(r.id, r.user_id, r.channel, r.priority) for r in rows]

    async def close_due_digests(self, limit: int = 500) -> int:
        """Close the digest windows that have ended and turn each into a notification of
        its own (through the outbox, in the same transaction). Returns how many closed."""
        async with self.db.transaction() as db:
            closed = await self.shaping.close_due_digests(db, limit)
            live = [digest for digest in closed if digest.count]
            stored = await insert_notifications(
                db, self.dialect, [digest_notification(d) for d in live], self.clock.now()
            )
            await self.shaping.mark_digest_notifications(
                db, {d.id: stored[("", f"digest:{d.id}")][0] for d in live}
            )
        return len(closed)

    async def maintain(self) -> None:
        """Periodic housekeeping: the delivery log keeps the retention period (PostgreSQL
        creates the coming days' partitions and drops whole expired ones), expired shaping
        state and webhook event ids are forgotten."""
        now = self.clock.now()
        days = self.db.retention_days
        async with self.db.transaction() as db:
            await self.dialect.drop_expired_events(db, now, days)
            await self.shaping.forget_expired(db, now - timedelta(days=days))
            await self._forget_old_webhook_events(db)

    async def count_by_state(self) -> dict[str, int]:
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(t.deliveries.c.state, sa.func.count()).group_by(t.deliveries.c.state)
            )
            return {row[0]: int(row[1]) for row in rows}

    async def _forget_old_webhook_events(self, db: AsyncConnection) -> None:
        """Housekeeping (maintain): ids past their keep_until are forgotten."""
        w = t.webhook_events
        await db.execute(w.delete().where(w.c.keep_until < self.clock.now()))


def _attempt(row: Any, detail: dict[str, Any]) -> dict[str, Any]:
    """An expired lease ends an attempt: its event names the attempt and its claim time,
    as an outcome event does (the log's `sending` entry comes from them)."""
    if row.claimed_at is None or detail.get("reason") == "due":
        return detail
    return {**detail, "attempt": row.attempts, "claimed_at": row.claimed_at.isoformat()}


# How many pages of notifications one sweep reads per lane at most: a backlog the router
# has not reached yet is read again by every sweep, from the first notification in it.
SWEEP_PAGES = 20

Position = tuple[int, int]


async def _sweep_ranges(db: AsyncConnection) -> list[tuple[int, Position, Position]]:
    """Per lane the relay publishes: (lane, the sweep's position, the relay's position).
    A lane with no sweep position (its row was lost) is read from the start."""
    s, r = t.sweep_positions.c, t.relay_positions.c
    rows = await db.execute(
        sa.select(
            r.lane,
            sa.func.coalesce(s.position_xid, 0).label("xid"),
            sa.func.coalesce(s.position_seq, -1).label("seq"),
            r.position_xid,
            r.position_seq,
        )
        .outerjoin(t.sweep_positions, s.lane == r.lane)
        .order_by(r.lane)
    )
    return [(row.lane, (row.xid, row.seq), (row.position_xid, row.position_seq)) for row in rows]


async def _sweep_lane(
    db: AsyncConnection,
    lane: int,
    span: tuple[Position, Position],
    older_than: datetime,
    *,
    page: int,
    wanted: int,
) -> tuple[Position, list[tuple[str, str, str]]]:
    """One lane's part of a sweep, from its position to the relay's (`span`), in pages of
    `page`: where its position goes, and up to `wanted` stale notifications."""
    start, end = span
    n = t.notifications.c
    order = sa.tuple_(n.relay_xid, n.relay_seq)
    settled = (told_state() != NotificationState.ACCEPTED.value).label("settled")
    position, after, blocked = start, start, False
    stale: list[tuple[str, str, str]] = []
    for _ in range(SWEEP_PAGES):
        rows = list(
            await db.execute(
                sa.select(
                    n.id, n.user_id, n.priority, n.created_at, n.relay_xid, n.relay_seq, settled
                )
                .where(
                    n.lane_order == lane,
                    order > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])),
                    order <= sa.tuple_(sa.literal(end[0]), sa.literal(end[1])),
                )
                .order_by(n.relay_xid, n.relay_seq)
                .limit(page)
            )
        )
        for row in rows:
            if row.settled:
                if not blocked:
                    position = (row.relay_xid, row.relay_seq)
                continue
            blocked = True
            if row.created_at <= older_than:
                stale.append((row.id, row.user_id, row.priority))
                if len(stale) >= wanted:
                    return position, stale
        if len(rows) < page:
            break
        after = (rows[-1].relay_xid, rows[-1].relay_seq)
    return position, stale
