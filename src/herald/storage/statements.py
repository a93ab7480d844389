"""Statements several repositories run inside their own transactions: inserting
notifications (the API's accept, a broadcast's page, a closing digest) and locking the
still-accepted ones (the router and a cancel)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import NotificationState
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.dialect import Dialect
from herald.storage.records import NewNotification
from herald.storage.rows import notification_row
from herald.util import chunks

BATCH_ROWS = Database.batch_rows


async def insert_notifications(
    db: AsyncConnection, dialect: Dialect, items: Sequence[NewNotification], now: datetime
) -> dict[tuple[str, str], tuple[str, str, bool]]:
    """Insert notifications, in the caller's transaction (the API's accept, a broadcast's
    page, a closing digest, a workflow's step): (api key id, idempotency key) ->
    (notification id, stored request hash, inserted now). The rows are the relay's outbox
    (herald.storage.outbox): nothing else is written for the relay."""

    n = t.notifications.c
    stored: dict[tuple[str, str], tuple[str, str, bool]] = {}
    for chunk in chunks(items, BATCH_ROWS):
        # An executemany, not .values([...]): SQLAlchemy caches one compiled
        # statement and batches the rows itself ("insertmanyvalues"), where a
        # multi-row VALUES was compiled again for every batch (most of the API's CPU).
        inserted = await db.execute(
            dialect.insert(t.notifications)
            .on_conflict_do_nothing(index_elements=["api_key_id", "idempotency_key"])
            .returning(n.id, n.api_key_id, n.idempotency_key),
            [
                notification_row(item, now) | place
                for item, place in zip(
                    chunk, await dialect.relay_places(db, len(chunk)), strict=True
                )
            ],
        )
        created = {(row.api_key_id, row.idempotency_key) for row in inserted}
        new = [item for item in chunk if item.idempotency_scope in created]
        for item in new:
            stored[item.idempotency_scope] = (item.notification.id, item.request_hash, True)
        existing: dict[str, list[str]] = {}
        for item in chunk:
            if item.idempotency_scope not in created:
                existing.setdefault(item.api_key_id, []).append(item.idempotency_key)
        for api_key_id, keys in existing.items():  # one API key per request, as a rule
            rows = await db.execute(
                sa.select(n.id, n.idempotency_key, n.request_hash).where(
                    n.api_key_id == api_key_id, n.idempotency_key.in_(keys)
                )
            )
            for row in rows:
                stored[(api_key_id, row.idempotency_key)] = (row.id, row.request_hash, False)
    return stored


def lock_accepted(which: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
    """The accepted notifications among `which`, locked in id order (PostgreSQL: FOR
    UPDATE; SQLite runs one transaction at a time). The router and a cancel lock the
    same rows in the same order, so they queue behind each other and never deadlock."""
    n = t.notifications.c
    return (
        sa.select(n.id)
        .where(which, n.state == NotificationState.ACCEPTED.value)
        .order_by(n.id)
        .with_for_update()
        .scalar_subquery()
    )
