"""The migrations build exactly the schema the store queries (schema.py), on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from herald.bus.interface import Lane, notifications_topic
from herald.domain import Priority
from herald.runtime import Runtime
from herald.storage import open_storage
from herald.storage import schema as t
from herald.storage.migrate import upgrade
from herald.storage.schema import BULK_LANE_ORDER, URGENT_LANE_ORDER, metadata
from tests.fixtures.activity import insert_notifications, notification_rows
from tests.fixtures.herald import eventually
from tests.storage.test_outbox import accept, relayed
from tests.storage.test_scheduling import relay_order, sweep_position, swept


def _differences(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection)
    return [diff for diff in compare_metadata(context, metadata) if not _is_partition(diff)]


def _is_partition(diff: tuple[Any, ...]) -> bool:
    """PostgreSQL keeps the delivery log in daily partitions (tables and their indexes)."""
    table = diff[1] if diff[0] == "remove_table" else getattr(diff[1], "table", None)
    return table is not None and table.name.startswith("delivery_events_")


async def test_migrations_match_the_schema(runtime: Runtime) -> None:
    async with runtime.storage.database.engine.connect() as db:
        assert await db.run_sync(_differences) == []


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no schema yet: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "embedded":
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"herald_upgrade_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_notifications_pending_in_the_old_outbox_are_relayed_after_0014(
    empty_database_url: str,
) -> None:
    storage = open_storage(empty_database_url)
    try:
        await upgrade(storage.database.engine, "0013")
        async with storage.database.transaction() as db:
            for key, priority in (("relayed", "normal"), ("pending", "normal"), ("otp", "high")):
                await db.execute(
                    t.notifications.insert().values(
                        id=f"n-{key}",
                        idempotency_key=key,
                        request_hash="",
                        user_id="u",
                        category="default",
                        priority=priority,
                        content={},
                        state="accepted",
                        created_at=storage.database.clock.now(),
                    )
                )
            for key, topic in (("pending", "bulk"), ("otp", "priority")):
                await db.execute(
                    sa.text(
                        "INSERT INTO outbox (topic, key, payload, created_at, lane_order) "
                        "VALUES (:topic, 'u', :payload, :at, :lane)"
                    ),
                    {
                        "topic": notifications_topic(Lane(topic)),
                        "payload": orjson.dumps({"notification_id": f"n-{key}"}),
                        "at": storage.database.clock.now(),
                        "lane": 0 if topic == "priority" else 1,
                    },
                )
            await db.execute(  # a broadcast's first page stays an outbox row
                sa.text(
                    "INSERT INTO outbox (topic, key, payload, created_at, lane_order) "
                    "VALUES ('herald.broadcasts', 'b', :payload, :at, 1)"
                ),
                {"payload": b'{"broadcast_id": "b"}', "at": storage.database.clock.now()},
            )
        await upgrade(storage.database.engine)
        published: list[tuple[str, bytes]] = []

        async def relayed_all() -> bool:
            async with storage.outbox.take(100) as batch:
                published.extend((topic, payload) for topic, _, payload in batch.records)
            return len(published) >= 3

        await eventually(relayed_all)  # PostgreSQL: the horizon may lag on a shared server
        assert sorted(published) == [
            ("herald.broadcasts", b'{"broadcast_id": "b"}'),
            (notifications_topic(Lane.BULK), orjson.dumps({"notification_id": "n-pending"})),
            (notifications_topic(Lane.PRIORITY), orjson.dumps({"notification_id": "n-otp"})),
        ]
        assert await storage.outbox.size() == 0
    finally:
        await storage.database.close()


async def test_after_0018_the_sweep_starts_before_each_lanes_first_notification_to_route(
    empty_database_url: str,
) -> None:
    """Before 0018 a routed notification was marked `routed`, so the `accepted` ones are
    those still to route. One from before 0014 (no relay order) is swept too."""
    storage = open_storage(empty_database_url)
    try:
        await upgrade(storage.database.engine, "0017")
        await accept(storage, "otp-routed", "otp-lost", priority=Priority.HIGH)
        await accept(storage, "routed", "later")
        assert sorted(await relayed(storage)) == [
            "n-later",
            "n-otp-lost",
            "n-otp-routed",
            "n-routed",
        ]
        n = t.notifications.c
        async with storage.database.transaction() as db:
            await db.execute(
                t.notifications.update()
                .where(n.id.in_(["n-otp-routed", "n-routed", "n-later"]))
                .values(state="routed")
            )
        [old] = notification_rows(1, start=storage.database.clock.now())
        old |= {"state": "accepted", "relay_xid": None, "relay_seq": None}  # before 0014, lost
        await insert_notifications(storage.database, [old])
        await upgrade(storage.database.engine)
        xid, seq = await relay_order(storage, "n-otp-lost")
        assert await sweep_position(storage, URGENT_LANE_ORDER) == (xid, seq - 1)
        assert await sweep_position(storage, BULK_LANE_ORDER) == (0, -1)
        assert sorted(await swept(storage)) == sorted([old["id"], "n-otp-lost"])
    finally:
        await storage.database.close()
