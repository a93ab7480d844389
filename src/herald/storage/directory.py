"""Users, their preferences and devices, templates and categories: the API's CRUD."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from herald.domain import DeliveryState, Device, Platform, Preferences, User
from herald.storage import schema as t
from herald.storage.native import EXISTING_USERS_SQL
from herald.storage.repository import Repository
from herald.storage.rows import (
    new_id,
    preferences_from_json,
    preferences_to_json,
    to_device,
    to_user,
    token_hash,
)

S = DeliveryState

# The tables delete_user erases by user_id: every one with the column, so a table added
# later is not forgotten (tests/storage/test_erasure.py walks the schema to check).
USER_KEYED_TABLES = [table for table in t.metadata.sorted_tables if "user_id" in table.c]


class DirectoryRepository(Repository):
    async def upsert_user(self, user: User) -> tuple[User, bool]:
        now = self.clock.now()
        values = {
            "email": user.email,
            "phone": user.phone,
            "timezone": user.timezone,
            "locale": user.locale,
            "updated_at": now,
        }
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(t.users)
                .values(id=user.id, created_at=now, preferences={}, **values)
                .on_conflict_do_nothing(index_elements=["id"])
            )
            created = bool(inserted.rowcount)
            if not created:
                await db.execute(t.users.update().where(t.users.c.id == user.id).values(**values))
            row = (await db.execute(sa.select(t.users).where(t.users.c.id == user.id))).one()
        return to_user(row), created

    async def get_user(self, user_id: str) -> User | None:
        async with self.db.reading() as db:
            row = (await db.execute(sa.select(t.users).where(t.users.c.id == user_id))).first()
        return to_user(row) if row else None

    async def existing_user_ids(self, user_ids: Iterable[str]) -> set[str]:
        """Of these users, those that exist: the API's accept asks on every request, so on
        the driver (herald.storage.native), as one bound array."""
        async with self.db.native() as native:
            rows = await native.fetch(EXISTING_USERS_SQL, list(set(user_ids)))
        return {row["id"] for row in rows}

    async def delete_user(self, user_id: str) -> bool:
        """Erase the user and everything Herald holds about them."""
        async with self.db.transaction() as db:
            notification_ids = sa.select(t.notifications.c.id).where(
                t.notifications.c.user_id == user_id
            )
            await db.execute(
                t.delivery_events.delete().where(
                    t.delivery_events.c.notification_id.in_(notification_ids)
                )
            )
            digest_ids = sa.select(t.digests.c.id).where(t.digests.c.user_id == user_id)
            await db.execute(
                t.digest_items.delete().where(t.digest_items.c.digest_id.in_(digest_ids))
            )
            run_ids = sa.select(t.workflow_runs.c.id).where(t.workflow_runs.c.user_id == user_id)
            await db.execute(
                t.workflow_run_steps.delete().where(t.workflow_run_steps.c.run_id.in_(run_ids))
            )
            # Every table keyed by user: one added later is erased too.
            for table in USER_KEYED_TABLES:
                await db.execute(table.delete().where(table.c.user_id == user_id))
            result = await db.execute(t.users.delete().where(t.users.c.id == user_id))
        return bool(result.rowcount)

    async def get_preferences(self, user_id: str) -> Preferences | None:
        async with self.db.reading() as db:
            raw = await db.scalar(sa.select(t.users.c.preferences).where(t.users.c.id == user_id))
        return None if raw is None else preferences_from_json(raw)

    async def put_preferences(self, user_id: str, preferences: Preferences) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(
                t.users.update()
                .where(t.users.c.id == user_id)
                .values(preferences=preferences_to_json(preferences), updated_at=self.clock.now())
            )
        return bool(result.rowcount)

    async def register_device(
        self,
        user_id: str,
        platform: Platform,
        token: str,
        subscription: dict[str, Any] | None = None,
    ) -> tuple[Device, bool]:
        """Register a device, or return the one with this token (moved to this user and
        re-activated: a token that comes back is alive again)."""
        now = self.clock.now()
        digest = token_hash(token)
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(t.devices)
                .values(
                    id=new_id(),
                    user_id=user_id,
                    platform=platform.value,
                    token=token,
                    token_hash=digest,
                    subscription=subscription,
                    active=True,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["platform", "token_hash"])
            )
            created = bool(inserted.rowcount)
            where = (t.devices.c.platform == platform.value, t.devices.c.token_hash == digest)
            if not created:
                await db.execute(
                    t.devices.update()
                    .where(*where)
                    .values(
                        user_id=user_id,
                        active=True,
                        deactivated_reason=None,
                        subscription=subscription,
                        updated_at=now,
                    )
                )
            row = (await db.execute(sa.select(t.devices).where(*where))).one()
        return to_device(row), created

    async def list_devices(self, user_id: str) -> list[Device]:
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(t.devices)
                .where(t.devices.c.user_id == user_id)
                .order_by(t.devices.c.created_at, t.devices.c.id)
            )
        return [to_device(row) for row in rows]

    async def delete_device(self, user_id: str, device_id: str) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(
                t.devices.delete().where(
                    t.devices.c.id == device_id, t.devices.c.user_id == user_id
                )
            )
        return bool(result.rowcount)

    async def put_template(self, name: str, definition: dict[str, Any]) -> bool:
        return await self._put_definition(t.templates, name, definition)

    async def get_template(self, name: str) -> dict[str, Any] | None:
        return await self._get_definition(t.templates, name)

    async def list_templates(self) -> list[tuple[str, dict[str, Any]]]:
        return await self._list_definitions(t.templates)

    async def delete_template(self, name: str) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(t.templates.delete().where(t.templates.c.name == name))
        return bool(result.rowcount)

    async def put_category(self, name: str, definition: dict[str, Any]) -> bool:
        return await self._put_definition(t.categories, name, definition)

    async def get_category(self, name: str) -> dict[str, Any] | None:
        return await self._get_definition(t.categories, name)

    async def list_categories(self) -> list[tuple[str, dict[str, Any]]]:
        return await self._list_definitions(t.categories)

    async def _put_definition(self, table: sa.Table, name: str, definition: dict[str, Any]) -> bool:
        now = self.clock.now()
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(table)
                .values(name=name, definition=definition, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            if not inserted.rowcount:
                await db.execute(
                    table.update()
                    .where(table.c.name == name)
                    .values(definition=definition, updated_at=now)
                )
        return bool(inserted.rowcount)

    async def _get_definition(self, table: sa.Table, name: str) -> dict[str, Any] | None:
        async with self.db.reading() as db:
            value = await db.scalar(sa.select(table.c.definition).where(table.c.name == name))
        return dict(value) if value is not None else None

    async def _list_definitions(self, table: sa.Table) -> list[tuple[str, dict[str, Any]]]:
        async with self.db.reading() as db:
            rows = await db.execute(
                sa.select(table.c.name, table.c.definition).order_by(table.c.name)
            )
        return [(row.name, dict(row.definition)) for row in rows]
