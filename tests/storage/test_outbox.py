"""The outbox under a deep backlog: the relay's statements must stay index lookups."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from herald.storage import Storage

pytestmark = pytest.mark.postgres

BACKLOG = 20_000


@pytest.fixture
async def deep_outbox(postgres_storage: Storage, postgres_test_url: str) -> Storage:
    """A PostgreSQL outbox holding BACKLOG rows (one in 1,000 urgent) whose statistics
    describe it as empty: what autovacuum records when it runs on a queue table just
    drained, whose pages it cannot hand back. PostgreSQL then estimates one row for any
    lookup, and picks among indexes by their cost for one row."""
    raw = await asyncpg.connect(postgres_test_url)
    try:
        for drained in (True, False):
            await raw.execute(
                "INSERT INTO outbox (topic, key, payload, created_at, lane_order) "
                "SELECT 'notifications.bulk', 'u' || n, '\\x00', now(), "
                "CASE WHEN n % 1000 = 0 THEN 0 ELSE 1 END FROM generate_series(1, $1) AS n",
                BACKLOG,
            )
            if drained:
                await raw.execute("DELETE FROM outbox")
                await raw.execute("VACUUM (TRUNCATE false, ANALYZE) outbox")
    finally:
        await raw.close()
    return postgres_storage


async def test_the_relay_deletes_published_rows_through_the_primary_key(
    deep_outbox: Storage,
) -> None:
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.startswith("DELETE FROM outbox"):
            statements.append((statement, params))

    sa.event.listen(deep_outbox.database.engine.sync_engine, "before_cursor_execute", capture)
    async with deep_outbox.outbox.take(500) as rows:
        assert len(rows) == 500
    [(delete, params)] = statements
    async with (
        deep_outbox.database.transaction() as db
    ):  # planned as the relay's transaction plans it
        await deep_outbox.database.dialect.plan_queue_by_index(db)
        raw = (await db.get_raw_connection()).driver_connection
        assert raw is not None
        plan = "\n".join(r[0] for r in await raw.fetch("EXPLAIN " + delete, *params))
    assert "outbox_pkey" in plan, plan
    assert await deep_outbox.outbox.size() == BACKLOG - 500


async def test_urgent_rows_are_taken_first_then_bulk_rows_in_order(
    deep_outbox: Storage,
) -> None:
    async with deep_outbox.outbox.take(30) as rows:
        keys = [key for _, key, _ in rows]
    urgent = [f"u{n}" for n in range(1000, BACKLOG + 1, 1000)]  # one in 1,000
    bulk = [f"u{n}" for n in range(1, 11)]
    assert keys == urgent + bulk
