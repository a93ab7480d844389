"""Notifications as the API takes them in: accept (idempotently; the row is the relay's outbox),
read, cancel."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import (
    Delivery,
    DeliveryEvent,
    DeliveryState,
    Notification,
    NotificationState,
    state_told,
)
from herald.domain.engagement import log_state
from herald.storage import schema as t
from herald.storage.broadcasts import mark_broadcast_cancelled
from herald.storage.guards import CANCEL, CANCEL_DIGESTED
from herald.storage.records import AcceptResult, NewNotification
from herald.storage.repository import Repository
from herald.storage.rows import SENT_COLUMNS, event_row, sent_event, to_delivery, to_notification
from herald.storage.shaping import Shaping
from herald.storage.statements import (
    BATCH_ROWS,
    has_deliveries,
    insert_notifications_natively,
    lock_accepted,
)

S = DeliveryState
Row = sa.Row[Any]


class NotificationRepository(Repository):
    async def accept(
        self, items: Sequence[NewNotification], *, of_known_users: bool = True
    ) -> list[AcceptResult]:
        """Insert notifications in one transaction (the relay reads the rows themselves).

        Idempotency rests on the unique (api_key_id, idempotency_key): a key is one API
        key's own. INSERT ... ON CONFLICT DO NOTHING, then the rows that did not go in are
        compared by request hash (same body: a replay; another body: a conflict). No
        read-then-write race. A key repeated inside one batch is judged against its first
        occurrence.

        Only notifications of users that exist go in (`unknown_user` otherwise), checked
        by the insert itself; a replay of one stored before is a replay still. Tests put
        in notifications the API would refuse with `of_known_users=False`.
        """
        firsts: dict[tuple[str, str], NewNotification] = {}
        for item in items:
            firsts.setdefault(item.idempotency_scope, item)
        new = list(firsts.values())
        async with self.db.native() as native:
            # Up to one batch is one INSERT, atomic on its own: no BEGIN and COMMIT round
            # trips (the replays' read-back after it reads committed rows either way).
            atomic = len(new) <= BATCH_ROWS
            async with contextlib.nullcontext() if atomic else native.transaction():
                stored = await insert_notifications_natively(
                    native, new, self.clock.now(), of_known_users=of_known_users
                )
        results = []
        for item in items:
            if item.idempotency_scope not in stored:
                results.append(
                    AcceptResult("", item.idempotency_key, created=False, unknown_user=True)
                )
                continue
            notification_id, stored_hash, created = stored[item.idempotency_scope]
            is_first = firsts[item.idempotency_scope] is item
            results.append(
                AcceptResult(
                    notification_id,
                    item.idempotency_key,
                    created=created and is_first,
                    conflict=item.request_hash != stored_hash,
                )
            )
        return results

    async def get(self, notification_id: str) -> Notification | None:
        """The notification, in the state clients see (herald.domain.state_told)."""
        n = t.notifications.c
        async with self.db.reading() as db:
            row = (
                await db.execute(
                    sa.select(t.notifications, has_deliveries(n.id).label("has_deliveries")).where(
                        n.id == notification_id
                    )
                )
            ).first()
        if row is None:
            return None
        notification = to_notification(row)
        return replace(notification, state=state_told(notification.state, row.has_deliveries))

    async def deliveries_of(self, notification_id: str) -> list[Delivery]:
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(t.deliveries)
                .where(t.deliveries.c.notification_id == notification_id)
                .order_by(t.deliveries.c.channel, t.deliveries.c.created_at, t.deliveries.c.id)
            )
        return [to_delivery(row) for row in rows]

    async def events_of(self, notification_id: str) -> list[DeliveryEvent]:
        """The notification's delivery log, oldest first: the events written, and the
        three kinds of entry the delivery rows hold instead of writing them (migrations
        0009 and 0017): `queued` when a delivery was made (unless its routing wrote an
        event: a plan that said more than queued), `sending` for each claim, at the claim
        time that each attempt's outcome event (or the row, for the attempt in flight or
        the send it tells) carries, and `sent` for the send a row tells (`sent_at`)."""
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(t.delivery_events)
                .where(t.delivery_events.c.notification_id == notification_id)
                .order_by(t.delivery_events.c.created_at, t.delivery_events.c.id)
            )
            written = [
                DeliveryEvent(
                    delivery_id=row.delivery_id,
                    notification_id=row.notification_id,
                    state=log_state(row.state),
                    at=row.created_at,
                    detail=row.detail or {},
                    provider=row.provider,
                )
                for row in rows
            ]
            d = t.deliveries.c
            deliveries = list(
                await db.execute(
                    sa.select(d.state, d.created_at, *(d[column] for column in SENT_COLUMNS)).where(
                        d.notification_id == notification_id
                    )
                )
            )
        kept_since = self.clock.now() - timedelta(days=self.db.retention_days)
        return timeline(notification_id, written, deliveries, kept_since)

    async def cancel(
        self, notification_ids: Sequence[str] = (), broadcast_id: str | None = None
    ) -> int:
        """Stop what has not been sent: notifications not yet routed are cancelled, their
        queued and deferred deliveries skipped, and what waits in an open digest taken out.
        Races with a worker's claim are settled by the two atomic UPDATEs: a delivery is
        either claimed or cancelled, never both. A router writing deliveries holds its
        notification's row, so the lock here waits for it; the row then still reads as
        not routed in this statement's snapshot and becomes cancelled, and the next
        statement, which sees the router's deliveries, skips them. Returns how many
        deliveries were cancelled."""
        n = t.notifications.c
        which = n.broadcast_id == broadcast_id if broadcast_id else n.id.in_(notification_ids)
        ids = sa.select(n.id).where(which).scalar_subquery()
        now = self.clock.now()
        async with self.db.transaction() as db:
            if broadcast_id:  # first: a page being written finishes before this goes on
                await mark_broadcast_cancelled(db, broadcast_id, now)
            await db.execute(
                t.notifications.update()
                .where(
                    n.id.in_(lock_accepted(which)),
                    n.state == NotificationState.ACCEPTED.value,
                    ~has_deliveries(n.id),
                )
                .values(state=NotificationState.CANCELLED.value)
            )
            rows = list(
                await db.execute(
                    t.deliveries.update()
                    .where(
                        t.deliveries.c.notification_id.in_(ids),
                        CANCEL.holds(t.deliveries.c.state),
                    )
                    .values(state=S.SKIPPED.value, last_error="cancelled", updated_at=now)
                    .returning(t.deliveries.c.id, t.deliveries.c.notification_id)
                )
            )
            rows += await self._skip_unfolded(db, await Shaping(self.db).unfold(db, ids), now)
            await self.dialect.insert_events(
                db,
                [
                    event_row(
                        DeliveryEvent(
                            r.id, r.notification_id, S.SKIPPED, now, {"reason": "cancelled"}
                        )
                    )
                    for r in rows
                ],
            )
        return len(rows)

    async def _skip_unfolded(
        self, db: AsyncConnection, removed: list[tuple[str, str]], now: datetime
    ) -> list[Row]:
        """The digested deliveries of items taken out of their digest become skipped."""
        if not removed:
            return []
        d = t.deliveries.c
        return list(
            await db.execute(
                t.deliveries.update()
                .where(
                    sa.tuple_(d.notification_id, d.channel).in_(removed),
                    CANCEL_DIGESTED.holds(d.state),
                )
                .values(state=S.SKIPPED.value, last_error="cancelled", updated_at=now)
                .returning(d.id, d.notification_id)
            )
        )


def timeline(
    notification_id: str,
    written: Sequence[DeliveryEvent],
    deliveries: Sequence[Any],
    kept_since: datetime,
) -> list[DeliveryEvent]:
    """The log entries the delivery rows stand for, merged with those written, in time
    order; only for deliveries made within the log's retention (`kept_since`), as the
    written events are. At one instant (a test's frozen clock): queued, then sending,
    then the send a row tells, then what was written (a webhook's word comes after the
    send it reports on)."""
    planned = {S.QUEUED, S.DEFERRED, S.SKIPPED, S.DIGESTED}
    first: dict[str, DeliveryEvent] = {}
    for event in written:
        first.setdefault(event.delivery_id, event)
    keyed: list[tuple[datetime, float, int, DeliveryEvent]] = []
    # The claims the written events carry, (delivery, attempt, claim time): a replay
    # numbers its attempts from 1 again.
    claims: set[tuple[str, int, datetime]] = set()
    for n, event in enumerate(written):
        keyed.append((event.at, 1, n, event))
        attempt, claimed_at = event.detail.get("attempt"), event.detail.get("claimed_at")
        if isinstance(attempt, int) and isinstance(claimed_at, str):
            sending = DeliveryEvent(
                event.delivery_id,
                notification_id,
                S.SENDING,
                datetime.fromisoformat(claimed_at),
                {"attempt": attempt},
            )
            claims.add((event.delivery_id, attempt, sending.at))
            keyed.append((sending.at, 0.5, n, sending))
    for row in deliveries:
        if row.created_at < kept_since:
            continue
        made = first.get(row.id)
        routed_with_event = (
            made is not None
            and made.at == row.created_at
            and made.state in planned
            and "attempt" not in made.detail
        )
        if not routed_with_event:
            queued = DeliveryEvent(row.id, notification_id, S.QUEUED, row.created_at)
            keyed.append((queued.at, 0, 0, queued))
        told = row.sent_at is not None
        in_flight = row.state == S.SENDING.value or told
        claim = (row.id, row.attempts, row.claimed_at)
        if in_flight and row.claimed_at is not None and claim not in claims:
            sending = DeliveryEvent(
                row.id, notification_id, S.SENDING, row.claimed_at, {"attempt": row.attempts}
            )
            keyed.append((sending.at, 0.5, len(written), sending))
        if told:
            sent = sent_event(row)
            keyed.append((sent.at, 0.75, 0, sent))
    return [event for *_, event in sorted(keyed, key=lambda item: item[:3])]
