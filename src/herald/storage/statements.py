"""Statements several repositories run inside their own transactions: inserting
notifications (the API's accept, a broadcast's page, a closing digest), locking the
still-accepted ones (the router and a cancel), and a notification's state as clients see
it."""

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
from herald.storage.native import Native
from herald.storage.records import NewNotification
from herald.storage.rows import notification_row
from herald.util import chunks

BATCH_ROWS = Database.batch_rows


Stored = dict[tuple[str, str], tuple[str, str, bool]]


async def insert_notifications(
    db: AsyncConnection, dialect: Dialect, items: Sequence[NewNotification], now: datetime
) -> Stored:
    """Insert notifications, in the caller's transaction (the API's accept, a broadcast's
    page, a closing digest, a workflow's step): (api key id, idempotency key) ->
    (notification id, stored request hash, inserted now). The rows are the relay's outbox
    (herald.storage.outbox): nothing else is written for the relay.

    On the driver when it is inside that transaction already (herald.storage.native), else
    through SQLAlchemy (PostgreSQL, before the transaction's first statement)."""
    native = await dialect.native_in_transaction(db)
    if native is not None:
        return await insert_notifications_natively(native, items, now, of_known_users=False)
    n = t.notifications.c
    stored: Stored = {}
    for chunk in chunks(items, BATCH_ROWS):
        # An executemany, not .values([...]): SQLAlchemy caches one compiled
        # statement and batches the rows itself ("insertmanyvalues").
        inserted = await db.execute(
            dialect.insert(t.notifications)
            .on_conflict_do_nothing(index_elements=["api_key_id", "idempotency_key"])
            .returning(n.id, n.api_key_id, n.idempotency_key),
            [notification_row(item, now) for item in chunk],
        )
        created = {(row.api_key_id, row.idempotency_key) for row in inserted}
        for api_key_id, keys in _settle(stored, chunk, created).items():
            rows = await db.execute(
                sa.select(n.id, n.idempotency_key, n.request_hash).where(
                    n.api_key_id == api_key_id, n.idempotency_key.in_(keys)
                )
            )
            for row in rows:
                stored[(api_key_id, row.idempotency_key)] = (row.id, row.request_hash, False)
    return stored


async def insert_notifications_natively(
    native: Native, items: Sequence[NewNotification], now: datetime, *, of_known_users: bool
) -> Stored:
    """`insert_notifications` on a driver connection, in its current transaction: one
    statement per batch, and the read-back of idempotent replays when there are any. With
    `of_known_users`, a notification whose user does not exist goes in only as a replay
    of one stored before: one neither inserted nor stored is not in the answer."""
    stored: Stored = {}
    for chunk in chunks(items, BATCH_ROWS):
        inserted = await native.insert_notifications(
            [notification_row(i, now) for i in chunk], of_known_users=of_known_users
        )
        created = {(row.api_key_id, row.idempotency_key) for row in inserted}
        for api_key_id, keys in _settle(stored, chunk, created).items():
            for row in await native.stored_notifications(api_key_id, keys):
                stored[(api_key_id, row.idempotency_key)] = (row.id, row.request_hash, False)
    return stored


def _settle(
    stored: Stored, chunk: Sequence[NewNotification], created: set[tuple[str, str]]
) -> dict[str, list[str]]:
    """Record the chunk's new notifications in `stored`; the idempotency keys, per API key,
    that were taken already (one API key per request, as a rule)."""
    existing: dict[str, list[str]] = {}
    for item in chunk:
        if item.idempotency_scope in created:
            stored[item.idempotency_scope] = (item.notification.id, item.request_hash, True)
        else:
            existing.setdefault(item.api_key_id, []).append(item.idempotency_key)
    return existing


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


def has_deliveries(notification_id: sa.ColumnElement[Any]) -> sa.Exists:
    """Whether the notification has deliveries: a routed one does (herald.domain.state_told)."""
    return sa.exists().where(t.deliveries.c.notification_id == notification_id)


def told_state() -> sa.ColumnElement[str]:
    """herald.domain.state_told in SQL, for a query over notifications."""
    n = t.notifications.c
    accepted, routed = NotificationState.ACCEPTED.value, NotificationState.ROUTED.value
    return sa.case((sa.and_(n.state == accepted, has_deliveries(n.id)), routed), else_=n.state)
