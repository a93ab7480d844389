"""Topics, subscriptions and broadcasts: fan-out to many users, for the API and the
router's broadcast fan-out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import NotificationState
from herald.storage import schema as t
from herald.storage.records import NewNotification
from herald.storage.repository import Repository
from herald.storage.statements import insert_notifications, told_state
from herald.util import chunks

CANCELLED = "cancelled"


class BroadcastRepository(Repository):
    async def subscribe(self, topic: str, user_id: str) -> bool:
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(t.topic_subscriptions)
                .values(topic=topic, user_id=user_id, created_at=self.clock.now())
                .on_conflict_do_nothing(index_elements=["topic", "user_id"])
            )
        return bool(inserted.rowcount)

    async def unsubscribe(self, topic: str, user_id: str) -> bool:
        s = t.topic_subscriptions.c
        async with self.db.transaction() as db:
            result = await db.execute(
                t.topic_subscriptions.delete().where(s.topic == topic, s.user_id == user_id)
            )
        return bool(result.rowcount)

    async def user_topics(self, user_id: str) -> list[str]:
        s = t.topic_subscriptions.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(s.topic).where(s.user_id == user_id).order_by(s.topic)
            )
        return [row.topic for row in rows]

    async def audience_page(
        self, *, topic: str | None, broadcast_id: str | None, after: str | None, limit: int
    ) -> list[str]:
        """The next user ids of a topic's subscribers or a broadcast's explicit list, in id
        order after `after` (keyset paging: no process holds the audience)."""
        if topic is not None:
            column = t.topic_subscriptions.c.user_id
            query = sa.select(column).where(t.topic_subscriptions.c.topic == topic)
        else:
            column = t.broadcast_recipients.c.user_id
            query = sa.select(column).where(t.broadcast_recipients.c.broadcast_id == broadcast_id)
        if after is not None:
            query = query.where(column > after)
        async with self.db.reading() as db:
            rows = await db.execute(query.order_by(column).limit(limit))
        return [row[0] for row in rows]

    async def create_broadcast(
        self,
        *,
        broadcast_id: str,
        idempotency_key: str,
        request_hash: str,
        api_key_id: str = "",
        topic: str | None,
        user_ids: Sequence[str] | None,
        template: dict[str, Any],
        first_page: tuple[str, str, bytes],
    ) -> tuple[str, bool, bool]:
        """(id, created, conflict). The broadcast, its explicit audience and the message
        that starts its fan-out are written in one transaction (the outbox again)."""
        now = self.clock.now()
        b = t.broadcasts.c
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(t.broadcasts)
                .values(
                    id=broadcast_id,
                    api_key_id=api_key_id,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                    topic=topic,
                    template=template,
                    state="fanning_out",
                    planned=0,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["api_key_id", "idempotency_key"])
            )
            if not inserted.rowcount:
                row = (
                    await db.execute(
                        sa.select(b.id, b.request_hash).where(
                            b.api_key_id == api_key_id, b.idempotency_key == idempotency_key
                        )
                    )
                ).one()
                return row.id, False, row.request_hash != request_hash
            planned = await self._store_audience(db, broadcast_id, topic, user_ids)
            await db.execute(
                t.broadcasts.update().where(b.id == broadcast_id).values(planned=planned)
            )
            topic_name, key, payload = first_page
            await db.execute(
                t.outbox.insert().values(topic=topic_name, key=key, payload=payload, created_at=now)
            )
        return broadcast_id, True, False

    async def _store_audience(
        self,
        db: AsyncConnection,
        broadcast_id: str,
        topic: str | None,
        user_ids: Sequence[str] | None,
    ) -> int:
        if user_ids is None:
            count = await db.scalar(
                sa.select(sa.func.count())
                .select_from(t.topic_subscriptions)
                .where(t.topic_subscriptions.c.topic == topic)
            )
            return int(count or 0)
        unique = sorted(set(user_ids))
        for chunk in chunks(unique, self.db.batch_rows * 4):
            await db.execute(
                t.broadcast_recipients.insert(),
                [{"broadcast_id": broadcast_id, "user_id": u} for u in chunk],
            )
        return len(unique)

    async def get_broadcast(self, broadcast_id: str) -> dict[str, Any] | None:
        async with self.db.reading() as db:
            row = (
                await db.execute(sa.select(t.broadcasts).where(t.broadcasts.c.id == broadcast_id))
            ).first()
        return dict(row._mapping) if row else None

    async def set_broadcast_state(
        self, broadcast_id: str, state: str, *, unless: str | None = None
    ) -> bool:
        b = t.broadcasts.c
        where = [b.id == broadcast_id]
        if unless is not None:
            where.append(b.state != unless)
        async with self.db.transaction() as db:
            result = await db.execute(
                t.broadcasts.update().where(*where).values(state=state, updated_at=self.clock.now())
            )
        return bool(result.rowcount)

    async def accept_broadcast_page(
        self, broadcast_id: str, items: Sequence[NewNotification]
    ) -> bool:
        """Accept one page of a broadcast's recipients unless the broadcast is cancelled
        (or gone), judged in the same transaction: the broadcast's row stays locked until
        the page is written, so a cancel either comes first (and nothing is written) or
        waits and then cancels the whole page. False when it wrote nothing."""
        b = t.broadcasts.c
        async with self.db.transaction() as db:
            state = await db.scalar(
                sa.select(b.state).where(b.id == broadcast_id).with_for_update()
            )
            if state is None or state == CANCELLED:
                return False
            await insert_notifications(db, self.dialect, items, self.clock.now())
        return True

    async def broadcast_progress(self, broadcast_id: str) -> dict[str, int]:
        """Notifications routed, and the broadcast's deliveries by state."""
        n = t.notifications.c
        state = told_state()
        async with self.db.reading() as db:
            notifications = await db.execute(
                sa.select(state, sa.func.count())
                .where(n.broadcast_id == broadcast_id)
                .group_by(state)
            )
            by_notification = {row[0]: int(row[1]) for row in notifications}
            deliveries = await db.execute(
                sa.select(t.deliveries.c.state, sa.func.count())
                .where(
                    t.deliveries.c.notification_id.in_(
                        sa.select(n.id).where(n.broadcast_id == broadcast_id)
                    )
                )
                .group_by(t.deliveries.c.state)
            )
            by_delivery = {row[0]: int(row[1]) for row in deliveries}
        return {
            "recipients_created": sum(by_notification.values()),
            "routed": by_notification.get(NotificationState.ROUTED.value, 0),
            **{f"deliveries_{state}": count for state, count in by_delivery.items()},
        }


async def mark_broadcast_cancelled(db: AsyncConnection, broadcast_id: str, now: datetime) -> None:
    """In a cancel's transaction: the broadcast is cancelled, and its row stays locked so
    a page of its fan-out being written is committed before the cancel reads on."""
    await db.execute(
        t.broadcasts.update()
        .where(t.broadcasts.c.id == broadcast_id)
        .values(state=CANCELLED, updated_at=now)
    )
