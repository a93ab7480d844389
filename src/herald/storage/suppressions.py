"""Addresses Herald must not send to (bounces, complaints, opt-outs), as the admin API
manages them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.storage import schema as t
from herald.storage.records import Page, Suppression
from herald.storage.repository import Repository
from herald.storage.rows import new_id, page, paged, to_suppression

S = DeliveryState


class SuppressionRepository(Repository):
    async def add(
        self, channel: str, address: str, reason: str, *, event_at: datetime | None = None
    ) -> tuple[Suppression, bool]:
        """Suppress an address (once: a second call keeps the first reason). `event_at` is
        when the suppressing event happened; the suppression keeps the latest one given."""
        s = t.suppressions
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(s)
                .values(
                    id=new_id(),
                    channel=channel,
                    address=address,
                    reason=reason,
                    created_at=self.clock.now(),
                    event_at=event_at,
                )
                .on_conflict_do_nothing(index_elements=["channel", "address"])
            )
            if event_at is not None and not inserted.rowcount:
                await db.execute(
                    s.update()
                    .where(
                        s.c.channel == channel,
                        s.c.address == address,
                        sa.or_(s.c.event_at.is_(None), s.c.event_at < event_at),
                    )
                    .values(event_at=event_at)
                )
            row = (
                await db.execute(
                    sa.select(t.suppressions).where(
                        t.suppressions.c.channel == channel, t.suppressions.c.address == address
                    )
                )
            ).one()
        return to_suppression(row), bool(inserted.rowcount)

    async def page(
        self, channel: str | None, address: str | None, limit: int, cursor: str | None
    ) -> Page[Suppression]:
        query = sa.select(t.suppressions)
        if channel:
            query = query.where(t.suppressions.c.channel == channel)
        if address:
            query = query.where(t.suppressions.c.address == address)
        rows = await page(self.db, query, t.suppressions, limit, cursor)
        return paged([to_suppression(r) for r in rows], limit)

    async def delete(self, suppression_id: str) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(
                t.suppressions.delete().where(t.suppressions.c.id == suppression_id)
            )
        return bool(result.rowcount)
