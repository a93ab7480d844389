"""Is anything due? One cheap statement the scheduler asks before its pass.

A scheduler pass is three to five transactions (release due deferrals, expire leases at
each policy, close digest windows), four times a second. When nothing is due, and that is
nearly always on a quiet fleet, this single read of three indexes answers it instead
(ix_deliveries_state_due, ix_deliveries_state_lease, ix_digests_state_end).

The conditions are exactly those of the pass's statements (Store.release_due,
Store.expire_leases, ShapingStore._close_due_digests), so "nothing due" here means the pass
would have changed nothing. (Kept beside the scheduler while the storage layer is being
rewritten; it belongs with the deliveries repository's scheduler statements.)
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from herald.domain import DeliveryState
from herald.storage import schema as t

_NOW = sa.bindparam("now", type_=t.UtcDateTime)
_d = t.deliveries.c
_g = t.digests.c
DIGEST_OPEN = "open"  # herald.storage.shaping.OPEN

ANYTHING_DUE = sa.select(
    sa.or_(
        sa.exists().where(_d.state == DeliveryState.DEFERRED.value, _d.due_at <= _NOW),
        sa.exists().where(_d.state == DeliveryState.SENDING.value, _d.lease_until < _NOW),
        sa.exists().where(_g.state == DIGEST_OPEN, _g.window_end <= _NOW),
    )
)


# The same as plain SQL: on PostgreSQL one prepared statement on a connection of the probe's
# own (no BEGIN / ROLLBACK around it, no compilation), on SQLite with `:now` for `$1`.
ANYTHING_DUE_PG = f"""
SELECT EXISTS (SELECT 1 FROM deliveries WHERE state = '{DeliveryState.DEFERRED.value}'
                                           AND due_at <= $1)
    OR EXISTS (SELECT 1 FROM deliveries WHERE state = '{DeliveryState.SENDING.value}'
                                           AND lease_until < $1)
    OR EXISTS (SELECT 1 FROM digests WHERE state = '{DIGEST_OPEN}' AND window_end <= $1)
"""


class DueProbe(Protocol):
    asked: int

    async def anything_due(self, now: datetime) -> bool: ...

    async def close(self) -> None: ...


class CoreDueProbe:
    """Through the store's engine (SQLite; any dialect)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.asked = 0  # diagnostics, tests

    async def anything_due(self, now: datetime) -> bool:
        self.asked += 1
        async with self.engine.connect() as db:
            return bool(await db.scalar(ANYTHING_DUE, {"now": now}))

    async def close(self) -> None:
        return None


class SqliteDueProbe:
    """sqlite3 on the event loop's thread, no aiosqlite thread hop: the read of three
    indexes takes microseconds, and in WAL mode it never waits for a writer (timeout 0: a
    locked database answers "due", and the pass runs as it always did)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.asked = 0
        self._connection: sqlite3.Connection | None = None
        self._sql = ANYTHING_DUE_PG.replace("$1", ":now")
        dialect = sqlite.dialect()
        # SQLAlchemy's own format for SQLite datetimes (text, always with microseconds),
        # so that the comparison is the one the store's statements make.
        self._format = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)

    async def anything_due(self, now: datetime) -> bool:
        self.asked += 1
        moment = now.astimezone(UTC).replace(tzinfo=None)  # as UtcDateTime stores it
        value = (
            self._format(moment)
            if self._format is not None
            else moment.isoformat(" ", timespec="microseconds")
        )
        try:
            if self._connection is None:
                self._connection = sqlite3.connect(
                    self.path, timeout=0, isolation_level=None, check_same_thread=False
                )
            # fetchall: the statement runs to its end, so no read snapshot stays open
            # (an open one would hold back the WAL's checkpoints).
            rows = self._connection.execute(self._sql, {"now": value}).fetchall()
        except sqlite3.Error:
            await self.close()
            return True
        return bool(rows and rows[0][0])

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class PgDueProbe:
    """asyncpg, connected on first use. A failed probe answers "due": the pass then runs
    and meets the outage the way it always has (logged, retried next interval)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.asked = 0
        self._connection: Any = None

    async def anything_due(self, now: datetime) -> bool:
        self.asked += 1
        try:
            if self._connection is None or self._connection.is_closed():
                import asyncpg

                self._connection = await asyncpg.connect(self.dsn, timeout=5)
            return bool(await self._connection.fetchval(ANYTHING_DUE_PG, now))
        except Exception:
            await self.close()
            return True

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.terminate()
