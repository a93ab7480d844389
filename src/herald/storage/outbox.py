"""The transactional outbox, as the relay drains it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import DeliveryState
from herald.storage import schema as t
from herald.storage.repository import Repository

S = DeliveryState


class OutboxRepository(Repository):
    @asynccontextmanager
    async def take(self, limit: int) -> AsyncIterator[list[tuple[str, str, bytes]]]:
        """Take up to `limit` outbox rows; they are deleted when the block exits cleanly.

        The rows stay locked (PostgreSQL: FOR UPDATE SKIP LOCKED) while the caller
        publishes, so each is published by one relay; a crash before the commit leaves
        them in place and they are published again, which the deterministic delivery ids
        absorb.
        """
        async with self.db.transaction() as db:
            await self.dialect.plan_queue_by_index(db)
            rows = await self._take_outbox_lane(db, t.URGENT_LANE_ORDER, limit)
            if len(rows) < limit:
                rows += await self._take_outbox_lane(db, t.BULK_LANE_ORDER, limit - len(rows))
            yield [(row.topic, row.key, row.payload) for row in rows]
            if rows:
                await db.execute(
                    t.outbox.delete().where(self.dialect.among(t.outbox.c.id, [r.id for r in rows]))
                )

    async def _take_outbox_lane(
        self, db: AsyncConnection, lane_order: int, limit: int
    ) -> list[sa.Row[Any]]:
        """One lane's oldest rows: urgent ones through the partial index ix_outbox_urgent,
        bulk ones in primary-key order."""
        query = (
            sa.select(t.outbox)
            .where(t.outbox.c.lane_order == lane_order)
            .order_by(t.outbox.c.id)
            .limit(limit)
        )
        return list(await db.execute(self.dialect.lock_skip(query)))

    async def size(self) -> int:
        async with self.db.reading() as db:
            return int(await db.scalar(sa.select(sa.func.count()).select_from(t.outbox)) or 0)
