"""What happened, for operators: notifications, users, broadcasts, topics, deliveries and the
dead-letter queue, listed and filtered (the activity API and the console read these), and
the replay of a dead letter.

Every list is keyset-paged: newest first on (created_at, id) (dead letters on
(updated_at, id), users and topics by name), one statement per page that reads one row more
than the page to know whether another follows, walking an index (migration 0012) whatever
the depth, so page 2,000 of a million rows costs what page 1 does. A page of notifications
takes one more statement for the deliveries of the notifications on it."""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from herald.bus.messages import delivery_record
from herald.domain import (
    Delivery,
    DeliveryEvent,
    DeliveryState,
    NotificationState,
    Priority,
    state_told,
)
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.guards import REPLAY
from herald.storage.notifications import NotificationRepository
from herald.storage.records import Page
from herald.storage.repository import Repository
from herald.storage.rows import (
    SENT_COLUMNS,
    InvalidCursor,
    event_row,
    lane_order,
    page,
    paged,
    sent_event,
    to_delivery,
)

S = DeliveryState
Row = sa.Row[Any]


@dataclass(frozen=True, slots=True)
class NotificationFilter:
    """Filters of a notification search; `status`, `channel` and `provider` are those of
    any of its deliveries."""

    user_id: str | None = None
    category: str | None = None
    status: str | None = None
    channel: str | None = None
    provider: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def on_deliveries(self) -> bool:
        return any(v is not None for v in (self.status, self.channel, self.provider))


@dataclass(frozen=True, slots=True)
class DeliveryBrief:
    id: str
    channel: str
    state: str
    provider: str | None


@dataclass(frozen=True, slots=True)
class NotificationSummary:
    id: str
    user_id: str
    category: str
    priority: str
    state: str
    title: str | None
    created_at: datetime
    broadcast_id: str | None
    deliveries: list[DeliveryBrief] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UserSummary:
    id: str
    email: str | None
    phone: str | None
    timezone: str
    locale: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BroadcastSummary:
    id: str
    topic: str | None
    state: str
    planned: int
    title: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TopicSummary:
    name: str
    subscribers: int


@dataclass(frozen=True, slots=True)
class Replay:
    """What a replay found: `replayed` when this call queued the delivery again, else the
    state it is in (a second replay of the same dead letter changes nothing)."""

    delivery_id: str
    replayed: bool
    state: str


def _encode(*parts: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def _decode(cursor: str, size: int) -> list[str]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError as error:
        raise InvalidCursor("cursor is not one this API returned") from error
    well_formed = isinstance(parts, list) and len(parts) == size
    if not (well_formed and all(isinstance(p, str) for p in parts)):
        raise InvalidCursor("cursor is not one this API returned")
    return [str(p) for p in parts]


def _after_name(column: sa.ColumnElement[str], cursor: str | None) -> list[sa.ColumnElement[bool]]:
    return [column > _decode(cursor, 1)[0]] if cursor else []


def _next_by_name(names: list[str], limit: int) -> str | None:
    return _encode(names[limit - 1]) if len(names) > limit else None


class ActivityRepository(Repository):
    health: _HealthReads

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.health = _HealthReads(database)

    async def notifications(
        self, where: NotificationFilter, limit: int, cursor: str | None
    ) -> Page[NotificationSummary]:
        n = t.notifications.c
        query = sa.select(
            n.id,
            n.user_id,
            n.category,
            n.priority,
            n.state,
            n.content,
            n.created_at,
            n.broadcast_id,
        )
        if where.user_id is not None:
            query = query.where(n.user_id == where.user_id)
        if where.category is not None:
            query = query.where(n.category == where.category)
        if where.since is not None:
            query = query.where(n.created_at >= where.since)
        if where.until is not None:
            query = query.where(n.created_at < where.until)
        if where.on_deliveries:
            d = t.deliveries.c
            match = [d.notification_id == n.id]
            if where.status is not None:
                match.append(d.state == where.status)
            if where.channel is not None:
                match.append(d.channel == where.channel)
            if where.provider is not None:
                match.append(d.provider == where.provider)
            query = query.where(sa.exists().where(*match))
        rows = await page(self.db, query, t.notifications, limit, cursor)
        result = paged(rows, limit)
        briefs = await self._briefs([r.id for r in result.items])
        return Page(
            [
                NotificationSummary(
                    r.id,
                    r.user_id,
                    r.category,
                    r.priority,
                    state_told(NotificationState(r.state), bool(briefs.get(r.id))).value,
                    (r.content or {}).get("title"),
                    r.created_at,
                    r.broadcast_id,
                    briefs.get(r.id, []),
                )
                for r in result.items
            ],
            result.next_cursor,
        )

    async def _briefs(self, notification_ids: Sequence[str]) -> dict[str, list[DeliveryBrief]]:
        if not notification_ids:
            return {}
        d = t.deliveries.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(d.notification_id, d.id, d.channel, d.state, d.provider)
                .where(d.notification_id.in_(notification_ids))
                .order_by(d.channel, d.id)
            )
            by_notification: dict[str, list[DeliveryBrief]] = defaultdict(list)
            for row in rows:
                by_notification[row.notification_id].append(
                    DeliveryBrief(row.id, row.channel, row.state, row.provider)
                )
        return by_notification

    async def users(self, query: str | None, limit: int, cursor: str | None) -> Page[UserSummary]:
        """By id; `query` matches the start of the id or of the email address."""
        u = t.users.c
        select = sa.select(u.id, u.email, u.phone, u.timezone, u.locale, u.created_at).where(
            *_after_name(u.id, cursor)
        )
        if query:
            select = select.where(
                sa.or_(
                    u.id.startswith(query, autoescape=True),
                    u.email.startswith(query, autoescape=True),
                )
            )
        async with self.db.reading() as db:
            rows = list(await db.execute(select.order_by(u.id).limit(limit + 1)))
        users = [UserSummary(*row) for row in rows[:limit]]
        return Page(users, _next_by_name([r.id for r in rows], limit))

    async def broadcasts(self, limit: int, cursor: str | None) -> Page[BroadcastSummary]:
        b = t.broadcasts.c
        query = sa.select(b.id, b.topic, b.state, b.planned, b.template, b.created_at, b.updated_at)
        rows = paged(await page(self.db, query, t.broadcasts, limit, cursor), limit)
        return Page(
            [
                BroadcastSummary(
                    r.id,
                    r.topic,
                    r.state,
                    int(r.planned),
                    (r.template or {}).get("title"),
                    r.created_at,
                    r.updated_at,
                )
                for r in rows.items
            ],
            rows.next_cursor,
        )

    async def topics(self, limit: int, cursor: str | None) -> Page[TopicSummary]:
        s = t.topic_subscriptions.c
        query = (
            sa.select(s.topic, sa.func.count())
            .where(*_after_name(s.topic, cursor))
            .group_by(s.topic)
            .order_by(s.topic)
            .limit(limit + 1)
        )
        async with self.db.reading() as db:
            rows = list(await db.execute(query))
        topics = [TopicSummary(row[0], int(row[1])) for row in rows[:limit]]
        return Page(topics, _next_by_name([row[0] for row in rows], limit))

    async def delivery(self, delivery_id: str) -> tuple[Delivery, list[DeliveryEvent]] | None:
        """A delivery and the entries of its notification's log that are its own."""
        async with self.db.reading() as db:
            row = (
                await db.execute(sa.select(t.deliveries).where(t.deliveries.c.id == delivery_id))
            ).first()
        if row is None:
            return None
        delivery = to_delivery(row)
        log = await NotificationRepository(self.db).events_of(delivery.notification_id)
        return delivery, [e for e in log if e.delivery_id == delivery_id]

    async def channels_of(self, notification_id: str) -> dict[str, str]:
        """The channel of each of a notification's deliveries (for its log's entries)."""
        d = t.deliveries.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(d.id, d.channel).where(d.notification_id == notification_id)
            )
            return {row.id: row.channel for row in rows}

    async def dead_letters(self, limit: int, cursor: str | None) -> Page[Delivery]:
        """Deliveries set aside as failed (retries used up, expired, a message no worker
        could process), most recently failed first."""
        d = t.deliveries.c
        query = sa.select(t.deliveries).where(REPLAY.holds(d.state))
        if cursor:
            updated_at, row_id = _decode(cursor, 2)
            query = query.where(
                sa.tuple_(d.updated_at, d.id)
                < sa.tuple_(
                    sa.literal(datetime.fromisoformat(updated_at), t.UtcDateTime()),
                    sa.literal(row_id),
                )
            )
        query = query.order_by(d.updated_at.desc(), d.id.desc()).limit(limit + 1)
        async with self.db.reading() as db:
            rows = list(await db.execute(query))
        items = [to_delivery(r) for r in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return Page(items, _encode(last.updated_at.isoformat(), last.id) if last else None)

    async def replay(self, delivery_ids: Sequence[str], reason: str) -> list[Replay]:
        """Queue dead letters again, each with a fresh retry budget, in one transaction with
        their outbox rows (the relay puts them on the bus). Only a delivery still failed is
        replayed: replaying twice sends once. A delivery that was sent before a webhook
        failed it gets its send's event written first, as the row stops telling it."""
        d = t.deliveries.c
        now = self.clock.now()
        async with self.db.transaction() as db:
            told = await db.execute(
                sa.select(*(d[c] for c in SENT_COLUMNS))
                .where(d.id.in_(delivery_ids), REPLAY.holds(d.state), d.sent_at.is_not(None))
                .with_for_update()
            )
            await self.dialect.insert_events(db, [event_row(sent_event(row)) for row in told])
            rows = list(
                await db.execute(
                    t.deliveries.update()
                    .where(d.id.in_(delivery_ids), REPLAY.holds(d.state))
                    .values(
                        state=S.QUEUED.value,
                        attempts=0,
                        last_error=None,
                        due_at=None,
                        lease_until=None,
                        sent_at=None,
                        updated_at=now,
                    )
                    .returning(d.id, d.notification_id, d.user_id, d.channel, d.priority)
                )
            )
            if rows:
                await self.dialect.insert_events(
                    db,
                    [
                        event_row(
                            DeliveryEvent(
                                r.id, r.notification_id, S.QUEUED, now, {"reason": reason}
                            )
                        )
                        for r in rows
                    ],
                )
                await db.execute(t.outbox.insert(), [_outbox_row(r, now) for r in rows])
            replayed = {r.id for r in rows}
            states = dict(
                (
                    await db.execute(
                        sa.select(d.id, d.state).where(
                            d.id.in_([i for i in delivery_ids if i not in replayed])
                        )
                    )
                ).all()
            )
        return [
            Replay(i, True, S.QUEUED.value)
            if i in replayed
            else Replay(i, False, str(states.get(i, "")))
            for i in delivery_ids
            if i in replayed or i in states
        ]

    async def failed_ids(self, limit: int) -> list[str]:
        """The ids of up to `limit` dead letters, oldest first (a replay of all)."""
        d = t.deliveries.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(d.id)
                .where(REPLAY.holds(d.state))
                .order_by(d.updated_at, d.id)
                .limit(limit)
            )
            return [row.id for row in rows]


def _outbox_row(row: Row, now: datetime) -> dict[str, Any]:
    record = delivery_record(row.id, row.user_id, row.channel, row.priority)
    return {
        "topic": record.topic,
        "key": record.key,
        "payload": record.value,
        "created_at": now,
        "lane_order": lane_order(Priority(row.priority)),
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """A delivery that changed state recently (the console's provider health and plots)."""

    channel: str
    provider: str | None
    state: str
    created_at: datetime
    updated_at: datetime
    last_error: str | None


class _HealthReads(Repository):
    """What the console's provider page reads: recent outcomes and retries, bounded."""

    async def outcomes_since(self, since: datetime, limit: int) -> list[Outcome]:
        """Deliveries updated since `since`, newest first, at most `limit`. No index holds
        every state by time since migration 0016 made (state, updated_at) partial to the
        unsent states: on PostgreSQL this scans deliveries (80 ms at 111,000 rows), which
        the console's provider page, its only caller, pays per view."""
        d = t.deliveries.c
        query = (
            sa.select(d.channel, d.provider, d.state, d.created_at, d.updated_at, d.last_error)
            .where(d.state.in_([s.value for s in S]), d.updated_at >= since)
            .order_by(d.updated_at.desc())
            .limit(limit)
        )
        async with self.db.reading() as db:
            return [Outcome(*row) for row in await db.execute(query)]

    async def retries_since(self, since: datetime, limit: int) -> dict[str, int]:
        """Retries scheduled since `since`, by provider (log entries of a deferral after
        an attempt)."""
        e = t.delivery_events.c
        query = (
            sa.select(e.provider, e.detail)
            .where(e.created_at >= since, e.state == S.DEFERRED.value, e.provider.is_not(None))
            .limit(limit)
        )
        counts: dict[str, int] = defaultdict(int)
        async with self.db.reading() as db:
            for provider, detail in await db.execute(query):
                if isinstance(detail, dict) and "attempt" in detail:
                    counts[str(provider)] += 1
        return dict(counts)
