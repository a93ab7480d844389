"""The hot statements, on the database driver itself.

A worker's claim and its outcome writes run once per batch of deliveries, and at a light
load a batch is one or two deliveries: there the cost of the statement, not of the rows,
is what a delivery pays. Through SQLAlchemy Core a statement costs several times the
client CPU of an asyncpg prepared statement (compilation cache lookup, parameter and
result processing, the TypeDecorators of every datetime column; docs/benchmarks.md,
"Figures behind code choices"). So these statements are written once as
SQL text, in PostgreSQL's syntax, and run on the driver: asyncpg (which prepares and
caches them per connection) or sqlite3 through aiosqlite, on the same pooled connection
SQLAlchemy uses (SQLite: the one connection that serialises the process's writes).

SQLite takes the same text with four translations (`$n` → `?n`, `= ANY($n::text[])` →
`IN (SELECT value FROM json_each(?n))`, casts and `FOR UPDATE` dropped: it runs one writer
at a time), and its values in the form SQLAlchemy stores them (datetimes as naive UTC text,
JSON as text): see the `Native` implementations.
The state guards in the text come from herald.storage.guards, like every other guard."""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from herald.domain import DeliveryState, NotificationState
from herald.storage import schema
from herald.storage.guards import (
    CLAIM,
    LATE_ANSWER,
    LEASE_EXPIRED_REQUEUE,
    OUTCOME,
    RELEASE_DUE,
    Guard,
)
from herald.storage.records import DeliveryUpdate
from herald.util import json_dumps

S = DeliveryState
DELIVERY_COLUMNS = (
    "id, notification_id, user_id, channel, platform, target, target_ref, state, policy, "
    "priority, category, payload, attempts, provider, provider_message_id, last_error, "
    "due_at, expires_at, lease_until, created_at, updated_at, claimed_at"
)
EVENT_COLUMNS = ("delivery_id", "notification_id", "state", "provider", "detail", "created_at")


def _in(guard: Guard, column: str = "state") -> str:
    return f"{column} IN ({', '.join(repr(v) for v in guard.values)})"


def _alive(then: str, otherwise: str) -> str:
    return (
        "CASE WHEN EXISTS (SELECT 1 FROM devices WHERE devices.id = deliveries.target_ref "
        f"AND devices.active) THEN {then} ELSE {otherwise} END"
    )


_CLAIMABLE = (
    f"id = ANY($1::text[]) AND {_in(CLAIM)} AND (state <> '{S.DEFERRED.value}' OR due_at <= $3)"
)

CLAIM_SQL = f"""
UPDATE deliveries SET state = 'sending', lease_until = $2, attempts = attempts + 1,
    claimed_at = $3, updated_at = $3
WHERE {_CLAIMABLE}
RETURNING {DELIVERY_COLUMNS}
"""

# Push: a delivery whose device went away since it was planned is skipped, not claimed,
# by the same statement.
CLAIM_NEEDS_DEVICE_SQL = f"""
UPDATE deliveries SET
    state = {_alive("'sending'", "'skipped'")},
    lease_until = {_alive("$2::timestamptz", "NULL")},
    attempts = {_alive("attempts + 1", "attempts")},
    claimed_at = {_alive("$3::timestamptz", "claimed_at")},
    last_error = {_alive("last_error", "$4::text")},
    due_at = {_alive("due_at", "NULL")},
    updated_at = $3
WHERE {_CLAIMABLE}
RETURNING {DELIVERY_COLUMNS}
"""

_RECORD_SET = """
    state = u.state,
    provider = coalesce(u.provider, d.provider),
    provider_message_id = coalesce(u.message_id, d.provider_message_id),
    last_error = u.error,
    due_at = u.due,
    lease_until = NULL,
    attempts = d.attempts - u.refund,
    updated_at = $8"""


def _late_answer_guard(row: str) -> str:
    targets = ", ".join(repr(s.value) for s in sorted(LATE_ANSWER.targets))
    return f"(d.{_in(OUTCOME)} OR (d.{_in(LATE_ANSWER)} AND {row}.state IN ({targets})))"


# One UPDATE joined to the whole batch as arrays.
RECORD_SQL_POSTGRES = f"""
UPDATE deliveries AS d SET {_RECORD_SET}
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::timestamptz[], $7::int[])
    AS u(id, state, provider, message_id, error, due, refund)
WHERE d.id = u.id AND {_late_answer_guard("u")}
"""

# SQLite has no arrays: the same change once per delivery (an executemany).
RECORD_SQL_SQLITE = f"""
UPDATE deliveries SET state = ?2, provider = coalesce(?3, provider),
    provider_message_id = coalesce(?4, provider_message_id), last_error = ?5, due_at = ?6,
    lease_until = NULL, attempts = attempts - ?7, updated_at = ?8
WHERE id = ?1 AND ({_in(OUTCOME)} OR ({_in(LATE_ANSWER)} AND ?2 IN ({
    ", ".join(repr(s.value) for s in sorted(LATE_ANSWER.targets))
})))
"""


class Record:
    """A row the driver returned, read by attribute like SQLAlchemy's rows (so rows.py maps
    it to the domain), its values converted as the schema types its table's columns."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


_KINDS: dict[str, dict[str, str]] = {}


def _column_kinds(table: sa.Table) -> dict[str, str]:
    """Column name -> "datetime", "json" or "bool", for the columns a driver may return in
    another form than SQLAlchemy would."""
    kinds = _KINDS.get(table.name)
    if kinds is None:
        kinds = {}
        for column in table.columns:
            if isinstance(column.type, schema.UtcDateTime):
                kinds[column.name] = "datetime"
            elif isinstance(column.type, sa.JSON):
                kinds[column.name] = "json"
            elif isinstance(column.type, sa.Boolean):
                kinds[column.name] = "bool"
        _KINDS[table.name] = kinds
    return kinds


class Native(abc.ABC):
    """One driver connection, for the hot statements."""

    async def records(self, table: sa.Table, sql: str, *args: Any) -> list[Record]:
        """Rows of `table` (all or some of its columns), as `Record`s."""
        kinds = _column_kinds(table)
        convert: dict[str, Callable[[Any], Any]] = {
            "datetime": self.read_at,
            "json": self.read_json,
            "bool": bool,
        }
        return [
            Record(
                {
                    name: value
                    if value is None or name not in kinds
                    else convert[kinds[name]](value)
                    for name, value in row.items()
                }
            )
            for row in await self.fetch(sql, *args)
        ]

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        """Run a statement that returns rows (as mappings of column name to value)."""

    @abc.abstractmethod
    def transaction(self) -> Any:
        """`async with`: the statements inside commit together."""

    @abc.abstractmethod
    async def record_outcomes(self, updates: Sequence[DeliveryUpdate], now: datetime) -> int:
        """The guarded state change of recording outcomes; how many rows changed."""

    @abc.abstractmethod
    async def append_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Append rows to the delivery log."""

    @abc.abstractmethod
    async def insert_deliveries(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert delivery rows (rows.delivery_row) unless their id exists; the ids
        inserted now."""

    @abc.abstractmethod
    def at(self, value: datetime | None) -> Any:
        """A datetime as this driver binds it."""

    @abc.abstractmethod
    def read_at(self, value: Any) -> datetime | None:
        """A datetime as this driver returns it, made an aware UTC datetime."""

    def read_json(self, value: Any) -> Any:
        return value


class AsyncpgNative(Native):
    """asyncpg: statements are prepared once per connection and cached by asyncpg."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        return list(await self.connection.fetch(sql, *args))

    def transaction(self) -> Any:
        return self.connection.transaction()

    async def record_outcomes(self, updates: Sequence[DeliveryUpdate], now: datetime) -> int:
        status = await self.connection.execute(
            RECORD_SQL_POSTGRES,
            [u.delivery_id for u in updates],
            [u.state.value for u in updates],
            [u.provider for u in updates],
            [u.provider_message_id for u in updates],
            [u.last_error for u in updates],
            [u.due_at for u in updates],
            [1 if u.attempts_refund else 0 for u in updates],
            now,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def append_events(self, events: Sequence[dict[str, Any]]) -> None:
        """COPY: the delivery log is append-only, and COPY is cheaper than a multi-row
        INSERT (docs/benchmarks.md, "Figures behind code choices")."""
        if events:
            await self.connection.copy_records_to_table(
                "delivery_events",
                columns=EVENT_COLUMNS,
                records=[
                    (
                        e["delivery_id"],
                        e["notification_id"],
                        e["state"],
                        e["provider"],
                        json_dumps(e["detail"]),
                        e["created_at"],
                    )
                    for e in events
                ],
            )

    async def insert_deliveries(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        if not rows:
            return set()
        arrays = [
            [json_dumps(row[name]) for row in rows]
            if name == "payload"
            else [row[name] for row in rows]
            for name, _ in DELIVERY_INSERT
        ]
        return {r["id"] for r in await self.connection.fetch(INSERT_DELIVERIES_SQL, *arrays)}

    def at(self, value: datetime | None) -> Any:
        return value

    def read_at(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]


_POSITIONAL = re.compile(r"\$(\d+)")
_CAST = re.compile(r"::[a-z]+(\[\])?")
_ANY_TEXT_ARRAY = re.compile(r"= ANY\(\$(\d+)::text\[\]\)")
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite


def sqlite_sql(sql: str) -> str:
    """PostgreSQL's text for SQLite: numbered parameters, no casts, and arrays as JSON
    arrays."""
    arrays = _ANY_TEXT_ARRAY.sub(r"IN (SELECT value FROM json_each($\1))", sql)
    return _POSITIONAL.sub(r"?\1", _CAST.sub("", arrays)).replace(" FOR UPDATE", "")


class SqliteNative(Native):
    """sqlite3 through aiosqlite, on the pool's one connection. Python's sqlite3 begins a
    transaction before the first write; `transaction()` and single statements commit."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._in_transaction = False

    def _args(self, args: Sequence[Any]) -> list[Any]:
        return [
            orjson.dumps(a).decode()
            if isinstance(a, list)
            else self.at(a)
            if isinstance(a, datetime)
            else a
            for a in args
        ]

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        cursor = await self.connection.execute(sqlite_sql(sql), self._args(args))
        try:
            names = [column[0] for column in cursor.description or ()]
            rows: list[Mapping[str, Any]] = [
                dict(zip(names, row, strict=True)) for row in await cursor.fetchall()
            ]
        finally:
            await cursor.close()
        if not self._in_transaction:
            await self.connection.commit()
        return rows

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self._in_transaction = True
        try:
            yield
        except BaseException:
            await self.connection.rollback()
            raise
        else:
            await self.connection.commit()
        finally:
            self._in_transaction = False

    async def record_outcomes(self, updates: Sequence[DeliveryUpdate], now: datetime) -> int:
        cursor = await self.connection.executemany(
            RECORD_SQL_SQLITE,
            [
                (
                    u.delivery_id,
                    u.state.value,
                    u.provider,
                    u.provider_message_id,
                    u.last_error,
                    self.at(u.due_at),
                    1 if u.attempts_refund else 0,
                    self.at(now),
                )
                for u in updates
            ],
        )
        changed = int(cursor.rowcount)
        await cursor.close()
        return changed

    async def append_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            cursor = await self.connection.executemany(
                "INSERT INTO delivery_events "
                "(delivery_id, notification_id, state, provider, detail, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        e["delivery_id"],
                        e["notification_id"],
                        e["state"],
                        e["provider"],
                        json_dumps(e["detail"]),
                        self.at(e["created_at"]),
                    )
                    for e in events
                ],
            )
            await cursor.close()

    async def insert_deliveries(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """An executemany (sqlite3 returns no rows from one): what exists already is read
        first, which no other writer can change before the commit."""
        if not rows:
            return set()
        ids = [row["id"] for row in rows]
        existing = {r["id"] for r in await self.fetch(EXISTING_DELIVERIES_SQL, ids)}
        cursor = await self.connection.executemany(
            INSERT_DELIVERY_SQLITE,
            [
                tuple(
                    json_dumps(row[name])
                    if name == "payload"
                    else self.at(row[name])
                    if kind == "timestamptz"
                    else row[name]
                    for name, kind in DELIVERY_INSERT
                )
                for row in rows
                if row["id"] not in existing
            ],
        )
        await cursor.close()
        return set(ids) - existing

    def at(self, value: datetime | None) -> Any:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None).strftime(_SQLITE_FORMAT)

    def read_at(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def read_json(self, value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str | bytes) else value


# The API's accept: which of the users named exist (DirectoryRepository.existing_user_ids).
EXISTING_USERS_SQL = "SELECT id FROM users WHERE id = ANY($1::text[])"

# The router's reads for a batch (RoutingRepository.load).
ROUTING_NOTIFICATIONS_SQL = (
    "SELECT * FROM notifications WHERE id = ANY($1::text[]) AND state = 'accepted' "
    "ORDER BY created_at, id"
)
ROUTING_USERS_SQL = "SELECT * FROM users WHERE id = ANY($1::text[])"
ROUTING_DEVICES_SQL = "SELECT * FROM devices WHERE user_id = ANY($1::text[]) AND active"
ROUTING_ADDRESSES_SQL = (
    "SELECT * FROM channel_addresses WHERE user_id = ANY($1::text[]) AND active ORDER BY kind"
)
ROUTING_SUPPRESSED_SQL = "SELECT channel, address FROM suppressions WHERE address = ANY($1::text[])"
ROUTING_CATEGORIES_SQL = "SELECT name, definition FROM categories WHERE name = ANY($1::text[])"
ROUTING_TEMPLATES_SQL = "SELECT name, definition FROM templates WHERE name = ANY($1::text[])"
FREQUENCY_CAPS_SQL = "SELECT channel, cap_limit, window_seconds FROM frequency_caps"

# The router's save (RoutingRepository.save). Only notifications still accepted move, locked
# in id order first as a cancel locks them (statements.lock_accepted), so that the router and
# a cancel queue behind each other instead of deadlocking.
_ACCEPTED = NotificationState.ACCEPTED.value


def _from_accepted(state: NotificationState, also: str = "") -> str:
    return f"""
UPDATE notifications SET state = '{state.value}'{also}
WHERE id IN (SELECT id FROM notifications WHERE id = ANY($1::text[]) AND state = '{_ACCEPTED}'
             ORDER BY id FOR UPDATE)
  AND state = '{_ACCEPTED}'
RETURNING id
"""


MARK_ROUTED_SQL = _from_accepted(NotificationState.ROUTED, ", routed_at = $2")
SET_ASIDE_SQL = _from_accepted(NotificationState.FAILED)

# The columns of rows.delivery_row, with their PostgreSQL array types (the payload is sent
# as JSON text and cast).
DELIVERY_INSERT: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("notification_id", "text"),
    ("user_id", "text"),
    ("channel", "text"),
    ("platform", "text"),
    ("target", "text"),
    ("target_ref", "text"),
    ("state", "text"),
    ("policy", "text"),
    ("priority", "text"),
    ("category", "text"),
    ("payload", "text"),
    ("attempts", "int"),
    ("provider", "text"),
    ("last_error", "text"),
    ("due_at", "timestamptz"),
    ("expires_at", "timestamptz"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_INSERT_NAMES = ", ".join(name for name, _ in DELIVERY_INSERT)

# PostgreSQL: the whole batch in one statement, as arrays.
INSERT_DELIVERIES_SQL = f"""
INSERT INTO deliveries ({_INSERT_NAMES})
SELECT {", ".join("u.payload::jsonb" if n == "payload" else f"u.{n}" for n, _ in DELIVERY_INSERT)}
FROM unnest({", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(DELIVERY_INSERT, 1))})
    AS u({_INSERT_NAMES})
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# SQLite: one row per execution (an executemany).
INSERT_DELIVERY_SQLITE = (
    f"INSERT INTO deliveries ({_INSERT_NAMES}) "
    f"VALUES ({', '.join('?' for _ in DELIVERY_INSERT)}) ON CONFLICT (id) DO NOTHING"
)
EXISTING_DELIVERIES_SQL = "SELECT id FROM deliveries WHERE id = ANY($1::text[])"

# Of every notification of the batch: only what the publish needs, no payloads decoded.
QUEUED_OF_SQL = (
    "SELECT id, user_id, channel, priority FROM deliveries "
    f"WHERE notification_id = ANY($1::text[]) AND state = '{S.QUEUED.value}'"
)

# The scheduler's question before its pass (SchedulingRepository.anything_due): the pass's
# own conditions, over ix_deliveries_state_due, ix_deliveries_state_lease and
# ix_digests_state_end.
ANYTHING_DUE_SQL = f"""
SELECT (EXISTS (SELECT 1 FROM deliveries WHERE {_in(RELEASE_DUE)} AND due_at <= $1)
     OR EXISTS (SELECT 1 FROM deliveries WHERE {_in(LEASE_EXPIRED_REQUEUE)}
                                          AND lease_until < $1)
     OR EXISTS (SELECT 1 FROM digests WHERE state = 'open' AND window_end <= $1)) AS due
"""
