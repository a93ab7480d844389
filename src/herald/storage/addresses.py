"""A user's webhook, chat and WhatsApp addresses: the API's CRUD, and the worker's
deactivation of an address its provider says is gone (a webhook answering 410)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from herald.domain import AddressKind, ChannelAddress
from herald.storage import schema as t
from herald.storage.repository import Repository
from herald.storage.rows import new_id, to_channel_address


class AddressRepository(Repository):
    async def put(
        self, user_id: str, kind: AddressKind, target: str, config: dict[str, Any]
    ) -> tuple[ChannelAddress, bool]:
        """Set the user's address of this kind (active again); True when it is new."""
        now = self.clock.now()
        c = t.channel_addresses.c
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(t.channel_addresses)
                .values(
                    id=new_id(),
                    user_id=user_id,
                    kind=kind.value,
                    target=target,
                    config=config,
                    active=True,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["user_id", "kind"])
            )
            created = bool(inserted.rowcount)
            where = (c.user_id == user_id, c.kind == kind.value)
            if not created:
                await db.execute(
                    t.channel_addresses.update()
                    .where(*where)
                    .values(
                        target=target,
                        config=config,
                        active=True,
                        deactivated_reason=None,
                        updated_at=now,
                    )
                )
            row = (await db.execute(sa.select(t.channel_addresses).where(*where))).one()
        return to_channel_address(row), created

    async def get(self, user_id: str, kind: AddressKind) -> ChannelAddress | None:
        c = t.channel_addresses.c
        async with self.db.reading() as db:
            row = (
                await db.execute(
                    sa.select(t.channel_addresses).where(c.user_id == user_id, c.kind == kind.value)
                )
            ).one_or_none()
        return to_channel_address(row) if row else None

    async def list(self, user_id: str) -> list[ChannelAddress]:
        c = t.channel_addresses.c
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(t.channel_addresses).where(c.user_id == user_id).order_by(c.kind)
            )
        return [to_channel_address(row) for row in rows]

    async def delete(self, user_id: str, kind: AddressKind) -> bool:
        c = t.channel_addresses.c
        async with self.db.transaction() as db:
            result = await db.execute(
                t.channel_addresses.delete().where(c.user_id == user_id, c.kind == kind.value)
            )
        return bool(result.rowcount)
