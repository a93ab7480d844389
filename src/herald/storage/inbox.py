"""The in-app inbox: items written by the inbox provider, read and marked by the API."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.domain.engagement import Engagement
from herald.storage import schema as t
from herald.storage.engagement import mark_engaged
from herald.storage.records import InboxItem, Page
from herald.storage.repository import Repository
from herald.storage.rows import inbox_row, page, paged, to_inbox_item

S = DeliveryState


class InboxRepository(Repository):
    async def insert(self, items: Sequence[InboxItem]) -> list[InboxItem]:
        """Store items; returns the ones that were new (a repeat of a delivery is not: it
        adds one to the stored item's `sends`)."""
        if not items:
            return []
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(t.inbox_items)
                .values([inbox_row(item) for item in items])
                # One item per delivery, but a repeat is counted, not hidden.
                .on_conflict_do_update(
                    index_elements=["delivery_id"],
                    set_={"sends": t.inbox_items.c.sends + 1},
                )
                .returning(t.inbox_items.c.id)
            )
            new = {row.id for row in inserted}
        return [item for item in items if item.id in new]

    async def page(
        self, user_id: str, limit: int, cursor: str | None, unread_only: bool
    ) -> tuple[Page[InboxItem], int]:
        query = sa.select(t.inbox_items).where(t.inbox_items.c.user_id == user_id)
        if unread_only:
            query = query.where(t.inbox_items.c.read_at.is_(None))
        rows = await page(self.db, query, t.inbox_items, limit, cursor)
        async with self.db.reading() as db:
            unread = await db.scalar(
                sa.select(sa.func.count())
                .select_from(t.inbox_items)
                .where(t.inbox_items.c.user_id == user_id, t.inbox_items.c.read_at.is_(None))
            )
        return paged([to_inbox_item(r) for r in rows], limit), int(unread or 0)

    async def mark_read(self, user_id: str, item_id: str | None) -> int:
        """Mark one item (or, with None, all) read, and their deliveries `read` (engagement);
        returns how many items changed."""
        where = [t.inbox_items.c.user_id == user_id, t.inbox_items.c.read_at.is_(None)]
        if item_id is not None:
            where.append(t.inbox_items.c.id == item_id)
        read = t.deliveries.c.id.in_(sa.select(t.inbox_items.c.delivery_id).where(*where))
        async with self.db.transaction() as db:
            await mark_engaged(db, self.dialect, read, Engagement.READ, self.clock.now())
            result = await db.execute(
                t.inbox_items.update().where(*where).values(read_at=self.clock.now())
            )
        return int(result.rowcount)

    async def has_item(self, user_id: str, item_id: str) -> bool:
        async with self.db.reading() as db:
            found = await db.scalar(
                sa.select(t.inbox_items.c.id).where(
                    t.inbox_items.c.user_id == user_id, t.inbox_items.c.id == item_id
                )
            )
        return found is not None

    async def since(self, user_id: str, item_id: str, limit: int) -> list[InboxItem]:
        """The user's items stored after `item_id` (an event id the stream sent), oldest
        first: what a reconnecting stream missed. Empty when the id is not the user's."""
        i = t.inbox_items.c
        async with self.db.reading() as db:
            last = (
                await db.execute(
                    sa.select(i.created_at, i.id).where(i.user_id == user_id, i.id == item_id)
                )
            ).first()
            if last is None:
                return []
            rows = await db.execute(
                sa.select(t.inbox_items)
                .where(
                    i.user_id == user_id,
                    sa.tuple_(i.created_at, i.id)
                    > sa.tuple_(sa.literal(last.created_at, t.UtcDateTime()), sa.literal(last.id)),
                )
                .order_by(i.created_at, i.id)
                .limit(limit)
            )
            return [to_inbox_item(row) for row in rows]
