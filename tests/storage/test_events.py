"""The delivery log on PostgreSQL is written with COPY, inside the caller's transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from herald.storage import Storage

pytestmark = pytest.mark.postgres


class Rollback(Exception):
    pass


def event(n: int) -> dict[str, Any]:
    return {
        "delivery_id": f"d{n}",
        "notification_id": "n1",
        "state": "sent",
        "provider": "fcm",
        "detail": {"attempt": n, "note": "ünïcode"},
        "created_at": datetime(2026, 11, 30, 12, 0, n, tzinfo=UTC),
    }


@pytest.mark.parametrize("begun", [True, False], ids=["copy", "before-the-first-statement"])
async def test_events_commit_and_roll_back_with_the_callers_transaction(
    postgres_storage: Storage, begun: bool
) -> None:
    storage = postgres_storage
    inserts: list[str] = []
    sa.event.listen(
        storage.database.engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: (
            inserts.append(statement)
            if statement.startswith("INSERT INTO delivery_events")
            else None
        ),
    )

    async def write(numbers: range, *, commit: bool) -> None:
        async with storage.database.transaction() as db:
            if begun:
                await db.execute(sa.text("SELECT 1"))
            await storage.database.dialect.insert_events(db, [event(n) for n in numbers])
            if not commit:
                raise Rollback

    with pytest.raises(Rollback):
        await write(range(3), commit=False)
    await write(range(3, 5), commit=True)

    log = await storage.notifications.events_of("n1")
    assert [(e.delivery_id, e.detail, e.at) for e in log] == [
        (f"d{n}", {"attempt": n, "note": "ünïcode"}, event(n)["created_at"]) for n in (3, 4)
    ]
    # COPY is not an INSERT; without a begun transaction the store falls back to one.
    assert len(inserts) == (0 if begun else 2)
