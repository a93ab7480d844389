"""Settings and API keys: what the API's authentication and the first start use."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.storage import schema as t
from herald.storage.records import ApiKeyRecord
from herald.storage.repository import Repository
from herald.storage.rows import to_api_key

S = DeliveryState


class KeyRepository(Repository):
    async def get_or_create_setting(self, key: str, factory: Callable[[], str]) -> str:
        async with self.db.transaction() as db:
            await db.execute(
                self.dialect.insert(t.settings_kv)
                .values(key=key, value=factory())
                .on_conflict_do_nothing(index_elements=["key"])
            )
            value = await db.scalar(
                sa.select(t.settings_kv.c.value).where(t.settings_kv.c.key == key)
            )
        return str(value)

    async def create_api_key(
        self, key_id: str, secret_hash: str, scopes: Sequence[str], name: str | None
    ) -> ApiKeyRecord:
        """Store a key; an id that exists already is left as it is (several processes
        seeding the same HERALD_API_KEY at once)."""
        record = ApiKeyRecord(key_id, secret_hash, tuple(scopes), name, self.clock.now(), None)
        async with self.db.transaction() as db:
            await db.execute(
                self.dialect.insert(t.api_keys)
                .values(
                    id=key_id,
                    secret_hash=secret_hash,
                    scopes=list(scopes),
                    name=name,
                    created_at=record.created_at,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
        return record

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self.db.reading() as db:
            row = (await db.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id))).first()
        return to_api_key(row) if row else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self.db.reading() as db:
            rows = await db.execute(sa.select(t.api_keys).order_by(t.api_keys.c.created_at.desc()))
        return [to_api_key(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(
                t.api_keys.update()
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
        return bool(result.rowcount)
