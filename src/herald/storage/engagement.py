"""Engagement: what recipients did with their deliveries (opened, clicked, dismissed, read).

The first report of each kind sets the delivery's `<kind>_at` and appends one entry to the
delivery log, in one transaction; a repeat finds the column set and changes nothing (one
conditional UPDATE, so two racing reports count once)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import Channel, DeliveryEvent
from herald.domain.engagement import Engagement, engagement_column
from herald.metrics import METRICS
from herald.storage import schema as t
from herald.storage.dialect import Dialect
from herald.storage.repository import Repository
from herald.storage.rows import event_row


@dataclass(frozen=True, slots=True)
class DeliveryOwner:
    delivery_id: str
    notification_id: str
    user_id: str
    channel: Channel
    category: str


async def mark_engaged(
    db: AsyncConnection,
    dialect: Dialect,
    which: sa.ColumnElement[bool],
    kind: Engagement,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> int:
    """In the caller's transaction: the deliveries among `which` that had no `kind` yet get
    it now, with their log entry. Returns how many were first reports."""
    d = t.deliveries.c
    column = d[engagement_column(kind)]
    rows = list(
        await db.execute(
            t.deliveries.update()
            .where(which, column.is_(None))
            .values({column.key: now})
            .returning(d.id, d.notification_id, d.channel, d.category)
        )
    )
    await dialect.insert_events(
        db,
        [
            event_row(DeliveryEvent(r.id, r.notification_id, kind, now, dict(detail or {})))
            for r in rows
        ],
    )
    for row in rows:
        METRICS.engagement.labels(kind.value, row.channel, row.category).inc()
    return len(rows)


class EngagementRepository(Repository):
    async def owner(self, delivery_id: str) -> DeliveryOwner | None:
        d = t.deliveries.c
        async with self.db.reading() as db:
            row = (
                await db.execute(
                    sa.select(d.id, d.notification_id, d.user_id, d.channel, d.category).where(
                        d.id == delivery_id
                    )
                )
            ).first()
        if row is None:
            return None
        return DeliveryOwner(
            row.id, row.notification_id, row.user_id, Channel(row.channel), row.category
        )

    async def report(
        self, delivery_id: str, kind: Engagement, detail: dict[str, Any] | None = None
    ) -> bool:
        """Record one report; True when it was the first of its kind for the delivery."""
        async with self.db.transaction() as db:
            first = await mark_engaged(
                db, self.dialect, t.deliveries.c.id == delivery_id, kind, self.clock.now(), detail
            )
        return first > 0

    async def of_notification(
        self, notification_id: str
    ) -> dict[str, dict[Engagement, datetime | None]]:
        """delivery id -> the time of the first report of each kind (None: none yet)."""
        d = t.deliveries.c
        kinds = list(Engagement)
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(d.id, *(d[engagement_column(k)] for k in kinds)).where(
                    d.notification_id == notification_id
                )
            )
            return {row[0]: dict(zip(kinds, row[1:], strict=True)) for row in rows}
