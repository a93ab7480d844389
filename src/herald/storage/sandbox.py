"""The sandbox provider's record of what it would have sent, one row per send."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.storage import schema as t
from herald.storage.records import Page, SandboxMessage
from herald.storage.repository import Repository
from herald.storage.rows import page, paged

S = DeliveryState


class SandboxRepository(Repository):
    async def insert(self, messages: Sequence[SandboxMessage]) -> None:
        """One row per send: a delivery sent twice is two rows (nothing hides a repeat)."""
        if not messages:
            return
        async with self.db.transaction() as db:
            await db.execute(
                self.dialect.insert(t.sandbox_messages).values(
                    [
                        {
                            "id": m.id,
                            "channel": m.channel,
                            "provider": m.provider,
                            "user_id": m.user_id,
                            "delivery_id": m.delivery_id,
                            "target": m.target,
                            "payload": m.payload,
                            "created_at": m.created_at,
                        }
                        for m in messages
                    ]
                )
            )

    async def page(
        self, channel: str | None, user_id: str | None, limit: int, cursor: str | None
    ) -> Page[SandboxMessage]:
        sandbox = t.sandbox_messages
        repeats = sandbox.alias("repeats")
        sends = (
            sa.select(sa.func.count())
            .where(repeats.c.delivery_id == sandbox.c.delivery_id)
            .scalar_subquery()
        )
        query = sa.select(sandbox, sends.label("sends"))
        if channel:
            query = query.where(t.sandbox_messages.c.channel == channel)
        if user_id:
            query = query.where(t.sandbox_messages.c.user_id == user_id)
        rows = await page(self.db, query, t.sandbox_messages, limit, cursor)
        return paged(
            [
                SandboxMessage(
                    r.id,
                    r.channel,
                    r.provider,
                    r.user_id,
                    r.delivery_id,
                    r.target,
                    r.payload,
                    r.created_at,
                    int(r.sends),
                )
                for r in rows
            ],
            limit,
        )
