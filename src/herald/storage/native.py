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
`IN (SELECT value FROM json_each(?n))`, casts and row locks (`FOR UPDATE`, `FOR SHARE`)
dropped: it runs one writer at a time), and its values in the form SQLAlchemy stores them
(datetimes as naive UTC text, JSON as text): see the `Native` implementations.
The state guards in the text come from herald.storage.guards, like every other guard."""

from __future__ import annotations

import abc
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import orjson
import sqlalchemy as sa

from herald.bus.interface import Lane, notifications_topic
from herald.domain import DeliveryState, NotificationState
from herald.domain.workflows import RunStatus
from herald.storage import schema
from herald.storage.guards import (
    CLAIM,
    LATE_ANSWER,
    LEASE_EXPIRED_REQUEUE,
    OUTCOME,
    RELEASE_DUE,
    UNDO_CLAIM,
    Guard,
    state_in_sql,
)
from herald.storage.records import DeliveryUpdate
from herald.util import json_dumps

T = TypeVar("T")
S = DeliveryState
DELIVERY_COLUMNS = (
    "id, notification_id, user_id, channel, platform, target, target_ref, state, policy, "
    "priority, category, payload, attempts, provider, provider_message_id, last_error, "
    "due_at, expires_at, lease_until, created_at, updated_at, claimed_at"
)
EVENT_COLUMNS = ("delivery_id", "notification_id", "state", "provider", "detail", "created_at")


def _in(guard: Guard, column: str = "state") -> str:
    return state_in_sql(guard.sources, column)


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

# The claim is one statement on its own, with no BEGIN and COMMIT: a push claim's skipped
# deliveries enter the delivery log ($5, the event's detail) in the same statement. At a
# light load a batch is one delivery, and a transaction's two extra round trips showed in
# a worker's profile (docs/benchmarks.md, "2026-12-03, evening").
CLAIM_NEEDS_DEVICE_SQL_POSTGRES = f"""
WITH claimed AS ({CLAIM_NEEDS_DEVICE_SQL}), logged AS (
    INSERT INTO delivery_events ({", ".join(EVENT_COLUMNS)})
    SELECT id, notification_id, state, NULL, $5::jsonb, $3 FROM claimed
    WHERE state = '{S.SKIPPED.value}'
)
SELECT * FROM claimed
"""


def gone_detail(reason: str) -> str:
    """The detail (JSON) of the log event of a delivery the claim skipped."""
    return json_dumps({"reason": reason})


# Undoes the claim taken with the lease $2, for the rows the worker could not read back.
UNDO_CLAIM_SQL = f"""
UPDATE deliveries SET state = '{S.QUEUED.value}', lease_until = NULL,
    attempts = attempts - 1, updated_at = $3
WHERE id = ANY($1::text[]) AND {_in(UNDO_CLAIM)} AND lease_until = $2
RETURNING id
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


# One UPDATE joined to the whole batch as arrays, and the attempts' log events ($9-$14,
# every attempt's, a late answer's too) in the same statement: written together or not at
# all, with no BEGIN and COMMIT. At a light load a batch is one or two outcomes, and the
# round trips were most of its cost (docs/benchmarks.md, "Figures behind code choices").
# A send the row tells by itself ($15, DeliveryUpdate.told_by_row) sets `sent_at` and writes
# no event, when it answers the claimed attempt (the row was sending); any other outcome,
# and one the guard refused (a late answer that does not overwrite), is logged.
_TOLD_SET = f"sent_at = CASE WHEN u.told AND d.{_in(OUTCOME)} THEN $8 ELSE d.sent_at END"

RECORD_SQL_POSTGRES = f"""
WITH changed AS (
    UPDATE deliveries AS d SET {_RECORD_SET}, {_TOLD_SET}
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::timestamptz[], $7::int[], $15::bool[])
        AS u(id, state, provider, message_id, error, due, refund, told)
    WHERE d.id = u.id AND {_late_answer_guard("u")}
    RETURNING d.id, u.told AND d.sent_at IS NOT DISTINCT FROM $8 AS told
), logged AS (
    INSERT INTO delivery_events ({", ".join(EVENT_COLUMNS)})
    SELECT e.delivery_id, e.notification_id, e.state, e.provider, e.detail::jsonb, e.created_at
    FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                $14::timestamptz[])
        AS e({", ".join(EVENT_COLUMNS)})
    WHERE e.delivery_id NOT IN (SELECT id FROM changed WHERE told)
)
SELECT count(*) FROM changed
"""

# SQLite has no arrays: the same change once per delivery (an executemany).
RECORD_SQL_SQLITE = f"""
UPDATE deliveries SET state = ?2, provider = coalesce(?3, provider),
    provider_message_id = coalesce(?4, provider_message_id), last_error = ?5, due_at = ?6,
    lease_until = NULL, attempts = attempts - ?7, updated_at = ?8,
    sent_at = CASE WHEN ?9 AND {_in(OUTCOME)} THEN ?8 ELSE sent_at END
WHERE id = ?1 AND ({_in(OUTCOME)} OR ({_in(LATE_ANSWER)} AND ?2 IN ({
    ", ".join(repr(s.value) for s in sorted(LATE_ANSWER.targets))
})))
"""


# The relay's pass (herald.storage.outbox), on PostgreSQL in two round trips: lock the
# lanes (a lane another relay holds is skipped), then read each locked lane's accepted
# notifications after its position and below the snapshot's xmin (every transaction below
# it has finished), and take the outbox table's rows.
#
# The lanes are locked with a transaction-level advisory lock rather than FOR UPDATE on
# their rows: a row lock gives the pass a transaction id while it publishes, and every open
# transaction id holds back the xmin that all relays on the server read below
# (docs/operations.md, "The relay"). The locks are taken by a statement of their own: a
# statement reads what was committed when it began, so a read that took a lane's lock
# itself could begin before the lane's previous holder committed its new position and
# released the lock, then get the lock and read the old position (publishing that
# holder's rows a second time).
RELAY_LOCK_KEY = 7263100  # + the lane
RELAY_LOCK_LANES_POSTGRES = f"""
SELECT coalesce(array_agg(lane), '{{}}') AS lanes FROM relay_positions
WHERE pg_try_advisory_xact_lock({RELAY_LOCK_KEY} + lane)
"""
# The relay's horizon: the oldest transaction still running that could have written a
# notification, i.e. one of this database's. The snapshot's xmin is the oldest of the whole
# server's, so a write transaction left open in any database of the server (a migration, a
# bulk load, another application's session idle in transaction) held every relay back
# until it ended. A running transaction is passed over only on evidence that it is another
# database's: pg_stat_activity shows it as the transaction of a backend connected to
# another database. One that ended before that view was read, a prepared transaction, or
# one whose backend this role may not see (without pg_read_all_stats, another role's
# backend_xid reads NULL) still counts, so the horizon is never later than the truth.
# The subquery is uncorrelated: PostgreSQL runs it once per statement.
RELAY_HORIZON_POSTGRES = """(
    SELECT coalesce(min(x::text::bigint), pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
    FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    WHERE x::xid NOT IN (
        SELECT backend_xid FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()
    )
)"""

# The pass also says, in the same snapshot, whether a locked lane holds notifications after
# its position that the horizon kept it from taking (a transaction of this database older
# than theirs is still open): a row with `held_back` true and nothing else. The relay then
# comes back for them within milliseconds, since their wake-up was spent on this pass. Read
# in the same statement, the answer cannot miss a row: whatever committed before the pass is
# in its snapshot, either below the horizon (taken) or at or above it (held back), and
# whatever commits after rings the wake-up again. (A separate question asked after the pass
# cost a round trip per pass, and one "at or above the horizon", read a moment later, missed
# rows once the horizon had moved past them.)
RELAY_TAKE_POSTGRES = f"""
WITH lanes AS (
    SELECT lane, position_xid, position_seq FROM relay_positions WHERE lane = ANY($2::smallint[])
), horizon AS (
    SELECT {RELAY_HORIZON_POSTGRES} AS xid
), side AS (
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox ORDER BY lane_order, id LIMIT $1 FOR UPDATE SKIP LOCKED
    )
    RETURNING lane_order, id, key, topic, payload
)
SELECT l.lane, n.relay_xid AS xid, n.relay_seq AS seq, n.id::text AS id, n.user_id AS key,
       NULL::text AS topic, NULL::bytea AS payload, false AS held_back
FROM lanes AS l CROSS JOIN horizon AS h CROSS JOIN LATERAL (
    SELECT relay_xid, relay_seq, id, user_id FROM notifications
    WHERE state = 'accepted' AND lane_order = l.lane
      AND (lane_order, relay_xid, relay_seq) > (l.lane, l.position_xid, l.position_seq)
      AND relay_xid < h.xid
    ORDER BY lane_order, relay_xid, relay_seq
    LIMIT $1
) AS n
UNION ALL
SELECT l.lane, NULL, NULL, NULL, NULL, NULL, NULL, true
FROM lanes AS l CROSS JOIN horizon AS h CROSS JOIN LATERAL (
    SELECT 1 FROM notifications
    WHERE state = 'accepted' AND lane_order = l.lane AND relay_xid >= h.xid
      AND (lane_order, relay_xid, relay_seq) > (l.lane, l.position_xid, l.position_seq)
    ORDER BY lane_order, relay_xid, relay_seq
    LIMIT 1
) AS held
UNION ALL
SELECT lane_order, NULL, id, NULL, key, topic, payload, false FROM side
ORDER BY 1, 2, 3
"""

RELAY_ADVANCE_POSTGRES = """
UPDATE relay_positions AS p SET position_xid = u.xid, position_seq = u.seq
FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS u(lane, xid, seq)
WHERE p.lane = u.lane
"""

# SQLite, one writer at a time: the same reads as separate statements, no locks. The
# position goes in as parameters: with it as subqueries (or as the first member of the row
# value) SQLite searched the index by lane alone and walked every notification the lane
# ever had (docs/benchmarks.md, "Figures behind code choices").
RELAY_POSITIONS_SQLITE = "SELECT lane, position_xid, position_seq FROM relay_positions"
RELAY_LANE_SQLITE = """
SELECT relay_xid AS xid, relay_seq AS seq, id, user_id AS key
FROM notifications
WHERE state = 'accepted' AND lane_order = $1 AND (relay_xid, relay_seq) > ($2, $3)
ORDER BY relay_xid, relay_seq
LIMIT $4
"""
RELAY_SIDE_SQLITE = (
    "SELECT id, lane_order, key, topic, payload FROM outbox ORDER BY lane_order, id LIMIT $1"
)
RELAY_ADVANCE_SQLITE = (
    "UPDATE relay_positions SET position_xid = ?2, position_seq = ?3 WHERE lane = ?1"
)
RELAY_LANES = (schema.URGENT_LANE_ORDER, schema.BULK_LANE_ORDER)
_LANE_TOPICS = {
    schema.URGENT_LANE_ORDER: notifications_topic(Lane.PRIORITY),
    schema.BULK_LANE_ORDER: notifications_topic(Lane.BULK),
}


def notification_payload(notification_id: str) -> bytes:
    return orjson.dumps({"notification_id": notification_id})


@dataclass(slots=True)
class RelayBatch:
    """What a relay pass publishes, urgent first, and where each lane's position goes once
    it is published: lane -> (relay_xid, relay_seq). Up to `limit` notifications in all
    (the bulk lane gets what the urgent one leaves), and every outbox-table row taken."""

    limit: int
    records: list[tuple[str, str, bytes]] = field(default_factory=list)
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    notifications: int = 0
    # Notifications after a lane's position that this pass could not see yet (PostgreSQL:
    # an older transaction of this database is still open; RELAY_TAKE_POSTGRES).
    held_back: bool = False

    def add_notification(
        self, lane: int, xid: int, seq: int, notification_id: str, key: str
    ) -> None:
        if self.notifications < self.limit:
            self.notifications += 1
            self.records.append((_LANE_TOPICS[lane], key, notification_payload(notification_id)))
            self.positions[lane] = (xid, seq)


# The accept's insert (herald.storage.statements.insert_notifications): one statement per
# batch, the idempotency conflicts skipped and the rows that went in returned.
# Column -> its PostgreSQL type (for the arrays of unnest); JSON goes as text and is cast.
_NOTIFICATION_TYPES = {
    "id": "text",
    "api_key_id": "text",
    "idempotency_key": "text",
    "request_hash": "text",
    "user_id": "text",
    "category": "text",
    "priority": "text",
    "content": "text",
    "channels": "text",
    "ttl_seconds": "int",
    "send_at": "timestamptz",
    "state": "text",
    "created_at": "timestamptz",
    "deliver_at_local": "text",
    "broadcast_id": "text",
    "lane_order": "smallint",
}
NOTIFICATION_COLUMNS = tuple(_NOTIFICATION_TYPES)
_JSON_COLUMNS = ("content", "channels")
_ARRAYS = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_NOTIFICATION_TYPES.values(), 1))
_VALUES = ", ".join(f"{c}::jsonb" if c in _JSON_COLUMNS else c for c in NOTIFICATION_COLUMNS)
_ON_CONFLICT = (
    "ON CONFLICT (api_key_id, idempotency_key) DO NOTHING RETURNING id, api_key_id, idempotency_key"
)
# The API's accept inserts only the rows of users that exist (`of_known_users`): the
# check is a condition of the insert, not a statement before it (docs/benchmarks.md,
# "2026-12-04"). What it leaves out, the caller tells from an idempotent replay by reading
# the keys back.
_OF_KNOWN_USERS = "WHERE EXISTS (SELECT 1 FROM users WHERE users.id = {user_id})"


def _insert_notifications_postgres(of_known_users: bool) -> str:
    return f"""
INSERT INTO notifications ({", ".join(NOTIFICATION_COLUMNS)})
SELECT {_VALUES}
FROM unnest({_ARRAYS})
    AS u({", ".join(NOTIFICATION_COLUMNS)})
{_OF_KNOWN_USERS.format(user_id="u.user_id") if of_known_users else ""}
{_ON_CONFLICT}
"""


INSERT_NOTIFICATIONS_POSTGRES = _insert_notifications_postgres(of_known_users=False)
INSERT_KNOWN_USERS_NOTIFICATIONS_POSTGRES = _insert_notifications_postgres(of_known_users=True)
STORED_NOTIFICATIONS_SQL = (
    "SELECT id, idempotency_key, request_hash FROM notifications "
    "WHERE api_key_id = $1 AND idempotency_key = ANY($2::text[])"
)
# SQLite's relay order (herald.storage.outbox): above every accepted notification's
# relay_seq and both positions, each a lookup at the end of an index. One writer at a time,
# so the order of the inserts is the order of the commits. Not the rowid: SQLite reuses the
# newest rowid once its row is deleted (a user's erasure).
SQLITE_TOP_RELAY_SEQ = f"""
SELECT max(coalesce((SELECT max(relay_seq) FROM notifications
                     WHERE state = 'accepted' AND lane_order = {schema.URGENT_LANE_ORDER}
                       AND relay_xid = 0), 0),
           coalesce((SELECT max(relay_seq) FROM notifications
                     WHERE state = 'accepted' AND lane_order = {schema.BULK_LANE_ORDER}
                       AND relay_xid = 0), 0),
           coalesce((SELECT max(position_seq) FROM relay_positions), 0)) AS top
"""
_SQLITE_NOTIFICATION_COLUMNS = (*NOTIFICATION_COLUMNS, "relay_xid", "relay_seq")


# SQLite names the columns of a VALUES list column1, column2, ...
_SQLITE_VALUES_USER_ID = f"column{_SQLITE_NOTIFICATION_COLUMNS.index('user_id') + 1}"


def _sqlite_insert_notifications(rows: int, of_known_users: bool) -> str:
    one = f"({', '.join('?' * len(_SQLITE_NOTIFICATION_COLUMNS))})"
    values = f"VALUES {', '.join([one] * rows)}"
    if of_known_users:
        known = _OF_KNOWN_USERS.format(user_id=f"v.{_SQLITE_VALUES_USER_ID}")
        values = f"SELECT * FROM ({values}) AS v {known}"
    return (
        f"INSERT INTO notifications ({', '.join(_SQLITE_NOTIFICATION_COLUMNS)}) "
        f"{values} {_ON_CONFLICT}"
    )


class Record:
    """A row the driver returned, read by attribute like SQLAlchemy's rows (so rows.py maps
    it to the domain), its values converted as the schema types its table's columns.

    The values are the instance's own `__dict__`: an attribute read is then a plain dict
    lookup, where a `__getattr__` first failed the normal lookup, an exception inside the
    interpreter for every column of every row (docs/benchmarks.md, "Figures behind code
    choices")."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__ = values

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


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

    # The column kinds (_column_kinds) this driver already returns as SQLAlchemy would.
    returns_as_schema: ClassVar[frozenset[str]] = frozenset()

    async def records(self, table: sa.Table, sql: str, *args: Any) -> list[Record]:
        """Rows of `table` (all or some of its columns), as `Record`s."""
        return self._as_records(table, await self.fetch(sql, *args))

    def _as_records(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> list[Record]:
        convert = self._converters(table)
        if not convert:
            return [Record(dict(row)) for row in rows]
        return [
            Record(
                {
                    name: value if value is None or name not in convert else convert[name](value)
                    for name, value in row.items()
                }
            )
            for row in rows
        ]

    def _converters(self, table: sa.Table) -> dict[str, Callable[[Any], Any]]:
        """Column name -> how to read its value, for the columns this driver returns in
        another form."""
        by_kind: dict[str, Callable[[Any], Any]] = {
            "datetime": self.read_at,
            "json": self.read_json,
            "bool": bool,
        }
        return {
            name: by_kind[kind]
            for name, kind in _column_kinds(table).items()
            if kind not in self.returns_as_schema
        }

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        """Run a statement that returns rows (as mappings of column name to value)."""

    async def fetch_locking(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        """`fetch` of rows the transaction will write over, as the first statement of a
        transaction: locked until it ends (PostgreSQL: the text's FOR UPDATE)."""
        return await self.fetch(sql, *args)

    @abc.abstractmethod
    def transaction(self) -> Any:
        """`async with`: the statements inside commit together."""

    @abc.abstractmethod
    async def claim(
        self, delivery_ids: list[str], lease_until: datetime, now: datetime, gone: str | None
    ) -> list[Record]:
        """The claim (herald.storage.deliveries), committed on its own; with `gone` (the
        reason), a delivery whose device went away is skipped, with its log event."""

    async def undo_claim(
        self, delivery_ids: list[str], lease_until: datetime, now: datetime
    ) -> int:
        """Back to queued: what the claim with `lease_until` took of `delivery_ids`."""
        rows = await self.fetch(UNDO_CLAIM_SQL, delivery_ids, self.at(lease_until), self.at(now))
        return len(rows)

    @abc.abstractmethod
    async def record_outcomes(
        self, updates: Sequence[DeliveryUpdate], events: Sequence[dict[str, Any]], now: datetime
    ) -> int:
        """The guarded state change of recording outcomes, and their events in the delivery
        log, committed together; how many deliveries changed."""

    @abc.abstractmethod
    async def append_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Append rows to the delivery log."""

    @abc.abstractmethod
    async def insert_deliveries(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert delivery rows (rows.delivery_row) unless their id exists; the ids
        inserted now."""

    @abc.abstractmethod
    async def route(
        self,
        notification_ids: list[str],
        routed_at: datetime,
        deliveries: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
    ) -> list[Mapping[str, Any]]:
        """The router's save of a batch that no digest or cap shapes
        (herald.storage.routing), committed on its own: of the notifications still to route
        (accepted, no delivery yet), those `deliveries` has none for are marked routed and
        the others get theirs (rows.delivery_row, inserted unless their id exists), and of
        `events` those of the deliveries inserted now are appended to the log. Returns
        (id, user_id, channel, priority) of every queued delivery of the batch."""

    @abc.abstractmethod
    async def insert_notifications(
        self, rows: Sequence[dict[str, Any]], *, of_known_users: bool = False
    ) -> list[Record]:
        """Insert notification rows (herald.storage.rows.notification_row), skipping those
        whose idempotency key is taken (and, `of_known_users`, those whose user does not
        exist); the (id, api_key_id, idempotency_key) of those that went in."""

    async def stored_notifications(self, api_key_id: str, keys: Sequence[str]) -> list[Record]:
        """(id, idempotency_key, request_hash) of an API key's notifications by key."""
        return await self.records(
            schema.notifications, STORED_NOTIFICATIONS_SQL, api_key_id, list(keys)
        )

    @abc.abstractmethod
    async def relay_take(self, limit: int) -> RelayBatch:
        """A relay pass's records (herald.storage.outbox), in the caller's transaction."""

    @abc.abstractmethod
    async def relay_advance(self, positions: Mapping[int, tuple[int, int]]) -> None:
        """Move the lanes' positions past what was published."""

    @abc.abstractmethod
    def at(self, value: datetime | None) -> Any:
        """A datetime as this driver binds it."""

    @abc.abstractmethod
    def read_at(self, value: Any) -> datetime | None:
        """A datetime as this driver returns it, made an aware UTC datetime."""

    def read_json(self, value: Any) -> Any:
        return value


def delivery_arrays(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Delivery rows as one array per column (DELIVERY_INSERT), the payload as JSON text."""
    return [
        [json_dumps(row[name]) for row in rows]
        if name == "payload"
        else [row[name] for row in rows]
        for name, _ in DELIVERY_INSERT
    ]


def _event_arrays(events: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The log events as one array per column (EVENT_COLUMNS), the detail as JSON text."""
    return [
        [json_dumps(e["detail"]) if name == "detail" else e[name] for e in events]
        for name in EVENT_COLUMNS
    ]


class AsyncpgNative(Native):
    """asyncpg: statements are prepared once per connection and cached by asyncpg."""

    # Aware datetimes, bools, and JSON decoded by the codec SQLAlchemy's dialect installs
    # on every connection of the pool.
    returns_as_schema = frozenset({"datetime", "json", "bool"})

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        return list(await self.connection.fetch(sql, *args))

    def transaction(self) -> Any:
        return self.connection.transaction()

    async def claim(
        self, delivery_ids: list[str], lease_until: datetime, now: datetime, gone: str | None
    ) -> list[Record]:
        times = (self.at(lease_until), self.at(now))
        if gone is None:
            return await self.records(schema.deliveries, CLAIM_SQL, delivery_ids, *times)
        return await self.records(
            schema.deliveries,
            CLAIM_NEEDS_DEVICE_SQL_POSTGRES,
            *(delivery_ids, *times, gone),
            gone_detail(gone),
        )

    async def record_outcomes(
        self, updates: Sequence[DeliveryUpdate], events: Sequence[dict[str, Any]], now: datetime
    ) -> int:
        changed = await self.connection.fetchval(
            RECORD_SQL_POSTGRES,
            [u.delivery_id for u in updates],
            [u.state.value for u in updates],
            [u.provider for u in updates],
            [u.provider_message_id for u in updates],
            [u.last_error for u in updates],
            [u.due_at for u in updates],
            [1 if u.attempts_refund else 0 for u in updates],
            now,
            *_event_arrays(events),
            [u.told_by_row for u in updates],
        )
        return int(changed)

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
        arrays = delivery_arrays(rows)
        return {r["id"] for r in await self.connection.fetch(INSERT_DELIVERIES_SQL, *arrays)}

    async def route(
        self,
        notification_ids: list[str],
        routed_at: datetime,
        deliveries: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
    ) -> list[Mapping[str, Any]]:
        planned = {row["notification_id"] for row in deliveries}
        if empty := [i for i in notification_ids if i not in planned]:
            await self.connection.fetch(MARK_ROUTED_SQL, empty, routed_at)
        rows = await self.connection.fetch(
            ROUTE_SQL_POSTGRES,
            notification_ids,
            *delivery_arrays(deliveries),
            *_event_arrays(events),
        )
        routed = {row["id"] for row in rows if row["kind"] == "routed"}
        inserted = [row for row in rows if row["kind"] == "inserted"]
        if planned - routed or len(inserted) < sum(
            1 for row in deliveries if row["notification_id"] in routed
        ):
            # Routed (or cancelled) by another transaction, perhaps one this statement
            # waited for (a second router's lock, or its insert of the same ids): what that
            # one wrote committed after this statement's snapshot, so only a statement of
            # its own sees it.
            return await self.fetch(QUEUED_OF_SQL, notification_ids)
        return [row for row in rows if row["kind"] != "routed" and row["state"] == _QUEUED]

    async def insert_notifications(
        self, rows: Sequence[dict[str, Any]], *, of_known_users: bool = False
    ) -> list[Record]:
        columns = [
            [json_dumps(r[c]) for r in rows] if c in _JSON_COLUMNS else [r[c] for r in rows]
            for c in NOTIFICATION_COLUMNS
        ]
        sql = (
            INSERT_KNOWN_USERS_NOTIFICATIONS_POSTGRES
            if of_known_users
            else INSERT_NOTIFICATIONS_POSTGRES
        )
        return [Record(dict(row)) for row in await self.connection.fetch(sql, *columns)]

    async def relay_take(self, limit: int) -> RelayBatch:
        batch = RelayBatch(limit)
        lanes = await self.connection.fetchval(RELAY_LOCK_LANES_POSTGRES)
        for row in await self.connection.fetch(RELAY_TAKE_POSTGRES, limit, lanes):
            if row["held_back"]:
                batch.held_back = True
            elif row["topic"] is None:
                batch.add_notification(row["lane"], row["xid"], row["seq"], row["id"], row["key"])
            else:
                batch.records.append((row["topic"], row["key"], bytes(row["payload"])))
        return batch

    async def relay_advance(self, positions: Mapping[int, tuple[int, int]]) -> None:
        if positions:
            lanes = sorted(positions)
            await self.connection.execute(
                RELAY_ADVANCE_POSTGRES,
                lanes,
                [positions[lane][0] for lane in lanes],
                [positions[lane][1] for lane in lanes],
            )

    def at(self, value: datetime | None) -> Any:
        return value

    def read_at(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]


_POSITIONAL = re.compile(r"\$(\d+)")
_CAST = re.compile(r"::[a-z]+(\[\])?")
_ANY_TEXT_ARRAY = re.compile(r"= ANY\(\$(\d+)::text\[\]\)")
_ROW_LOCK = re.compile(r" FOR (UPDATE|SHARE)\b")
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite


# Cached: the statements are a few constants, and translating the router's load (a long
# UNION ALL) on every call cost more than running it (docs/benchmarks.md, "Figures behind
# code choices").
@functools.cache
def sqlite_sql(sql: str) -> str:
    """PostgreSQL's text for SQLite: numbered parameters, no casts, and arrays as JSON
    arrays."""
    arrays = _ANY_TEXT_ARRAY.sub(r"IN (SELECT value FROM json_each($\1))", sql)
    return _ROW_LOCK.sub("", _POSITIONAL.sub(r"?\1", _CAST.sub("", arrays)))


INSERT_EVENT_SQLITE = (
    "INSERT INTO delivery_events "
    "(delivery_id, notification_id, state, provider, detail, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# After RECORD_SQL_SQLITE, in its transaction: an outcome's event, unless the row now tells
# it (?7: told by the row, and the update set its `sent_at` to the event's time).
INSERT_OUTCOME_EVENT_SQLITE = (
    "INSERT INTO delivery_events "
    "(delivery_id, notification_id, state, provider, detail, created_at) "
    "SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT (?7 AND EXISTS "
    "(SELECT 1 FROM deliveries WHERE id = ?1 AND sent_at = ?6))"
)


def _begun_immediate(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """`work`, in a transaction begun IMMEDIATE first unless one is open already."""

    def begun(connection: sqlite3.Connection) -> T:
        if not connection.in_transaction:
            connection.execute("BEGIN IMMEDIATE")
        return work(connection)

    return begun


def _sqlite_rows(
    connection: sqlite3.Connection, sql: str, values: Sequence[Any]
) -> list[dict[str, Any]]:
    """A statement's rows as mappings (on the connection's thread)."""
    cursor = connection.execute(sql, values)
    try:
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _sqlite_positions(connection: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """The relay's lane -> (position_xid, position_seq)."""
    return {
        row["lane"]: (row["position_xid"], row["position_seq"])
        for row in _sqlite_rows(connection, RELAY_POSITIONS_SQLITE, [])
    }


def _sqlite_many(connection: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """An executemany; how many rows it changed (on the connection's thread)."""
    cursor = connection.executemany(sql, rows)
    try:
        return int(cursor.rowcount)
    finally:
        cursor.close()


def _sqlite_insert_deliveries(
    connection: sqlite3.Connection, values: Mapping[str, tuple[Any, ...]]
) -> set[str]:
    """An executemany of delivery rows unless their id exists (sqlite3 returns no rows from
    one: what exists is read first, which no other writer can change before the commit);
    the ids inserted now."""
    if not values:
        return set()
    ids = orjson.dumps(list(values)).decode()
    existing = {
        row["id"] for row in _sqlite_rows(connection, sqlite_sql(EXISTING_DELIVERIES_SQL), [ids])
    }
    new = [row for delivery_id, row in values.items() if delivery_id not in existing]
    _sqlite_many(connection, INSERT_DELIVERY_SQLITE, new)
    return set(values) - existing


class SqliteNative(Native):
    """sqlite3 through aiosqlite, on the pool's one connection. Python's sqlite3 begins a
    transaction before the first write; `transaction()` and single statements commit.

    Each method sends all of its statements (and the commit of a statement on its own) to
    the connection's thread as one function: one hop from the event loop and back, not one
    per execute, fetch, cursor close and commit. Every hop waits for the loop to take its
    result, behind whatever else the loop is running, and the process's one connection
    is held, idle, meanwhile (docs/benchmarks.md, "One hop per statement on SQLite")."""

    def __init__(self, connection: Any, *, in_transaction: bool = False) -> None:
        self.connection = connection
        # True: inside a transaction SQLAlchemy opened and will end (commit nothing here).
        self._in_transaction = in_transaction
        # `transaction()` began and no statement has run in it yet.
        self._begin_pending = False

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, commit: bool = False) -> T:
        """`work(connection)` on the connection's thread; with `commit` (outside a
        transaction), committed there too, or rolled back when it raises. aiosqlite's
        `_execute` is its one way to run a function on that thread (private API of the
        version uv.lock pins; the whole embedded suite runs through it)."""
        driver = self.connection
        if self._begin_pending:
            self._begin_pending, work = False, _begun_immediate(work)
        if not commit or self._in_transaction:
            return cast(T, await driver._execute(work, driver._conn))

        def committed(connection: sqlite3.Connection) -> T:
            try:
                result = work(connection)
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
            return result

        return cast(T, await driver._execute(committed, driver._conn))

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
        query, values = sqlite_sql(sql), self._args(args)
        rows = await self._run(lambda c: _sqlite_rows(c, query, values), commit=True)
        return cast(list[Mapping[str, Any]], rows)  # the dicts, read as mappings

    async def fetch_locking(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        """The transaction begins IMMEDIATE with this statement (in the same hop): SQLite
        has no row locks, and Python's sqlite3 would begin only at the first write, so
        another connection to the file (a second process, a peer in the tests) could
        commit between these reads and this transaction's writes: two routers would both
        read a notification as not routed and fold it into its digest twice."""
        self._begin_pending = self._in_transaction
        return await self.fetch(sql, *args)

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
            self._in_transaction = self._begin_pending = False

    async def claim(
        self, delivery_ids: list[str], lease_until: datetime, now: datetime, gone: str | None
    ) -> list[Record]:
        sql = sqlite_sql(CLAIM_SQL if gone is None else CLAIM_NEEDS_DEVICE_SQL)
        values = self._args([delivery_ids, lease_until, now] + ([] if gone is None else [gone]))
        at = self.at(now)

        def claim(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = _sqlite_rows(connection, sql, values)
            skipped = [
                (row["id"], row["notification_id"], row["state"], None, gone_detail(gone), at)
                for row in rows
                if gone is not None and row["state"] == S.SKIPPED.value
            ]
            if skipped:
                _sqlite_many(connection, INSERT_EVENT_SQLITE, skipped)
            return rows

        return self._as_records(schema.deliveries, await self._run(claim, commit=True))

    async def record_outcomes(
        self, updates: Sequence[DeliveryUpdate], events: Sequence[dict[str, Any]], now: datetime
    ) -> int:
        states = self._record_rows(updates, now)
        logged = [
            (*event, u.told_by_row)
            for event, u in zip(self._event_rows(events), updates, strict=True)
        ]

        def record(connection: sqlite3.Connection) -> int:
            changed = _sqlite_many(connection, RECORD_SQL_SQLITE, states)
            if logged:
                _sqlite_many(connection, INSERT_OUTCOME_EVENT_SQLITE, logged)
            return changed

        return await self._run(record, commit=True)

    def _record_rows(
        self, updates: Sequence[DeliveryUpdate], now: datetime
    ) -> list[tuple[Any, ...]]:
        at = self.at(now)
        return [
            (
                u.delivery_id,
                u.state.value,
                u.provider,
                u.provider_message_id,
                u.last_error,
                self.at(u.due_at),
                1 if u.attempts_refund else 0,
                at,
                u.told_by_row,
            )
            for u in updates
        ]

    def _event_rows(self, events: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (
                e["delivery_id"],
                e["notification_id"],
                e["state"],
                e["provider"],
                json_dumps(e["detail"]),
                self.at(e["created_at"]),
            )
            for e in events
        ]

    async def append_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            logged = self._event_rows(events)
            await self._run(lambda c: _sqlite_many(c, INSERT_EVENT_SQLITE, logged))

    async def insert_deliveries(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        if not rows:
            return set()
        values = self._delivery_values(rows)
        return await self._run(lambda c: _sqlite_insert_deliveries(c, values))

    async def route(
        self,
        notification_ids: list[str],
        routed_at: datetime,
        deliveries: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
    ) -> list[Mapping[str, Any]]:
        mark_sql, route_sql = sqlite_sql(MARK_ROUTED_SQL), sqlite_sql(TO_ROUTE_SQL)
        queued_sql = sqlite_sql(QUEUED_OF_SQL)
        ids, at = self._args([notification_ids])[0], self.at(routed_at)
        values = self._delivery_values(deliveries)
        notification_of = {row["id"]: row["notification_id"] for row in deliveries}
        planned = set(notification_of.values())
        empty = self._args([[i for i in notification_ids if i not in planned]])[0]
        logged = self._event_rows(events)

        def route(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            if planned != set(notification_ids):
                _sqlite_rows(connection, mark_sql, [empty, at])
            routed = {row["id"] for row in _sqlite_rows(connection, route_sql, [ids])}
            new = _sqlite_insert_deliveries(
                connection, {k: v for k, v in values.items() if notification_of[k] in routed}
            )
            if first := [event for event in logged if event[0] in new]:
                _sqlite_many(connection, INSERT_EVENT_SQLITE, first)
            return _sqlite_rows(connection, queued_sql, [ids])

        return cast(list[Mapping[str, Any]], await self._run(route, commit=True))

    def _delivery_values(self, rows: Sequence[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        """Delivery id -> its row as INSERT_DELIVERY_SQLITE binds it."""
        return {
            row["id"]: tuple(
                json_dumps(row[name])
                if name == "payload"
                else self.at(row[name])
                if kind == "timestamptz"
                else row[name]
                for name, kind in DELIVERY_INSERT
            )
            for row in rows
        }

    async def insert_notifications(
        self, rows: Sequence[dict[str, Any]], *, of_known_users: bool = False
    ) -> list[Record]:
        columns = [
            [
                json_dumps(row[c])
                if c in _JSON_COLUMNS
                else self.at(row[c])
                if isinstance(row[c], datetime)
                else row[c]
                for c in NOTIFICATION_COLUMNS
            ]
            for row in rows
        ]
        insert_sql = _sqlite_insert_notifications(len(rows), of_known_users)
        top_sql = sqlite_sql(SQLITE_TOP_RELAY_SEQ)

        def insert(connection: sqlite3.Connection) -> list[Record]:
            (top,) = _sqlite_rows(connection, top_sql, [])
            seq = int(top["top"] or 0)
            values: list[Any] = []
            for number, row in enumerate(columns, start=seq + 1):
                values += [*row, 0, number]
            return [Record(r) for r in _sqlite_rows(connection, insert_sql, values)]

        return await self._run(insert, commit=True)

    async def relay_take(self, limit: int) -> RelayBatch:
        side_sql, lane_sql = sqlite_sql(RELAY_SIDE_SQLITE), sqlite_sql(RELAY_LANE_SQLITE)
        delete_sql = sqlite_sql("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each($1))")

        def take(connection: sqlite3.Connection) -> RelayBatch:
            batch = RelayBatch(limit)
            side = _sqlite_rows(connection, side_sql, [limit])
            positions = _sqlite_positions(connection)
            for lane in RELAY_LANES:
                xid, seq = positions[lane]
                for row in _sqlite_rows(connection, lane_sql, [lane, xid, seq, limit]):
                    batch.add_notification(lane, row["xid"], row["seq"], row["id"], row["key"])
                batch.records += [
                    (r["topic"], r["key"], bytes(r["payload"]))
                    for r in side
                    if r["lane_order"] == lane
                ]
            if side:
                ids = orjson.dumps([r["id"] for r in side]).decode()
                _sqlite_rows(connection, delete_sql, [ids])
            return batch

        return await self._run(take, commit=True)

    async def relay_advance(self, positions: Mapping[int, tuple[int, int]]) -> None:
        if positions:
            rows = [(lane, xid, seq) for lane, (xid, seq) in sorted(positions.items())]
            await self._run(lambda c: _sqlite_many(c, RELAY_ADVANCE_SQLITE, rows))

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


# Which of the users named exist (DirectoryRepository.existing_user_ids: a workflow's
# trigger asks).
EXISTING_USERS_SQL = "SELECT id FROM users WHERE id = ANY($1::text[])"

# The router's read for a batch (RoutingRepository.load), in one round trip: the batch's
# accepted notifications and what planning them needs (their users, the users' active
# devices and addresses, the suppressions of the users' email addresses and phone numbers,
# the notifications' categories and templates, and the channel-wide frequency caps). At a
# light load a batch is one or two notifications, and one statement per table cost seven
# more round trips than the rows did. One UNION ALL of typed rows, one snapshot: `source`
# names the table a row comes from, and the row fills that table's columns under their own
# names (so rows.py maps it as it maps the table's rows); the other columns are NULL.
# Column -> its PostgreSQL type (a NULL in a UNION must be typed).
ROUTING_COLUMNS: dict[str, str] = {
    "source": "text",
    "id": "text",
    "user_id": "text",
    # notifications
    "idempotency_key": "text",
    "category": "text",
    "priority": "text",
    "content": "jsonb",
    "channels": "jsonb",
    "ttl_seconds": "int",
    "send_at": "timestamptz",
    "state": "text",
    "deliver_at_local": "text",
    "broadcast_id": "text",
    # users
    "email": "text",
    "phone": "text",
    "timezone": "text",
    "locale": "text",
    "preferences": "jsonb",
    # devices and channel addresses
    "platform": "text",
    "token": "text",
    "subscription": "jsonb",
    "kind": "text",
    "target": "text",
    "config": "jsonb",
    "active": "boolean",
    "deactivated_reason": "text",
    # suppressions and frequency caps
    "channel": "text",
    "address": "text",
    "cap_limit": "int",
    "window_seconds": "int",
    # categories and templates
    "name": "text",
    "definition": "jsonb",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}
_COLUMN_TYPES = {
    column.name: column.type
    for table in (
        schema.notifications,
        schema.users,
        schema.devices,
        schema.channel_addresses,
        schema.suppressions,
        schema.frequency_caps,
        schema.categories,
        schema.templates,
    )
    for column in table.columns
}
# The shape of ROUTING_LOAD_SQL's rows as a table (in no schema, never created): each column
# typed as in its own table, so `Native.records` reads the datetimes, JSON and booleans as
# it reads the tables'.
ROUTING_ROW = sa.Table(
    "routing_load",
    sa.MetaData(),
    *(sa.Column(name, _COLUMN_TYPES.get(name, sa.Text())) for name in ROUTING_COLUMNS),
)


def _routing_branch(source: str, source_from: str, filled: str) -> str:
    """One table's rows in the union's shape: its own columns, typed NULLs for the rest."""
    columns = filled.split()
    values = [
        f"'{source}' AS source"
        if name == "source"
        else name
        if name in columns
        else f"NULL::{kind} AS {name}"
        for name, kind in ROUTING_COLUMNS.items()
    ]
    return f"SELECT {', '.join(values)} FROM {source_from}"


# (source, FROM clause, the columns it fills). The batch is read once, in the CTE.
_ROUTING_BRANCHES: tuple[tuple[str, str, str], ...] = (
    (
        "notification",
        "batch",
        "id user_id idempotency_key category priority content channels ttl_seconds send_at "
        "state deliver_at_local broadcast_id created_at",
    ),
    ("user", "batch_users", "id email phone timezone locale preferences created_at updated_at"),
    (
        "device",
        "devices WHERE user_id IN (SELECT user_id FROM batch) AND active",
        "id user_id platform token subscription active deactivated_reason created_at",
    ),
    (
        "address",
        "channel_addresses WHERE user_id IN (SELECT user_id FROM batch) AND active",
        "id user_id kind target config active deactivated_reason created_at updated_at",
    ),
    (
        "suppression",
        "suppressions WHERE address IN "
        "(SELECT email FROM batch_users UNION ALL SELECT phone FROM batch_users)",
        "channel address",
    ),
    ("category", "categories WHERE name IN (SELECT category FROM batch)", "name definition"),
    (
        "template",
        "templates WHERE name IN (SELECT content ->> 'template' FROM batch)",
        "name definition",
    ),
    ("cap", "frequency_caps", "channel cap_limit window_seconds"),
)
_UNION_ALL = "\nUNION ALL\n"
ROUTING_LOAD_SQL = f"""
WITH batch AS (
    SELECT * FROM notifications WHERE id = ANY($1::text[]) AND state = 'accepted'
), batch_users AS (
    SELECT * FROM users WHERE id IN (SELECT user_id FROM batch)
)
{_UNION_ALL.join(_routing_branch(*branch) for branch in _ROUTING_BRANCHES)}
ORDER BY source, kind, created_at, id
"""

# The router's save (RoutingRepository.save). A notification is routed once: while it is
# accepted and has no delivery yet. Its deliveries are what say it was routed (migration
# 0018): the router writes no mark on a notification it gives deliveries, and only one it
# plans none for becomes `routed`. Either way the rows are locked in id order first, as a
# cancel locks them (statements.lock_accepted), so that the router and a cancel queue
# behind each other instead of deadlocking.
_ACCEPTED = NotificationState.ACCEPTED.value
_QUEUED = S.QUEUED.value
_NO_DELIVERY = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id)"


def _from_unrouted(state: NotificationState, also: str = "") -> str:
    return f"""
UPDATE notifications SET state = '{state.value}'{also}
WHERE id IN (SELECT id FROM notifications WHERE id = ANY($1::text[]) AND state = '{_ACCEPTED}'
             ORDER BY id FOR UPDATE)
  AND state = '{_ACCEPTED}' AND {_NO_DELIVERY}
RETURNING id
"""


# A notification planned no delivery (no user, no channel of theirs) is marked routed.
MARK_ROUTED_SQL = _from_unrouted(NotificationState.ROUTED, ", routed_at = $2")
SET_ASIDE_SQL = _from_unrouted(NotificationState.FAILED)

# The notifications of a batch still to route, locked FOR SHARE: a cancel (FOR UPDATE) and
# the router wait for each other, two routers handed one notification do not (their
# inserts of the same deterministic ids settle it). A cancel that committed first leaves
# the row `cancelled`, which the lock's recheck of the state excludes.
TO_ROUTE_SQL = f"""
SELECT id FROM notifications
WHERE id = ANY($1::text[]) AND state = '{_ACCEPTED}' AND {_NO_DELIVERY}
ORDER BY id FOR SHARE
"""

# A batch with digest folds or cap claims (RoutingRepository._save_shaped) counts each
# notification once, so a second router of it must wait and then see the first one's
# deliveries: the accepted rows are locked FOR UPDATE, and which of them have no delivery
# is asked in a statement of its own, whose snapshot is taken after the lock was granted.
LOCK_ACCEPTED_SQL = f"""
SELECT id FROM notifications WHERE id = ANY($1::text[]) AND state = '{_ACCEPTED}'
ORDER BY id FOR UPDATE
"""
UNROUTED_OF_SQL = f"SELECT id FROM notifications WHERE id = ANY($1::text[]) AND {_NO_DELIVERY}"

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
_INSERT_VALUES = ", ".join(
    "u.payload::jsonb" if n == "payload" else f"u.{n}" for n, _ in DELIVERY_INSERT
)


def _delivery_parameters(first: int) -> str:
    """DELIVERY_INSERT's arrays as parameters, numbered from `first`."""
    return ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(DELIVERY_INSERT, first))


INSERT_DELIVERIES_SQL = f"""
INSERT INTO deliveries ({_INSERT_NAMES})
SELECT {_INSERT_VALUES}
FROM unnest({_delivery_parameters(1)})
    AS u({_INSERT_NAMES})
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# The router's save of a batch no digest or cap shapes, in one statement with no BEGIN and
# COMMIT (at a light load a batch is one notification, and the transaction's six round
# trips were a quarter of the router's time: docs/benchmarks.md): the notifications to
# route ($1), the deliveries of those ($2-$20), the log events of those inserted now
# ($21-$26), and what the publish needs. Its rows: `routed` ones (the notifications it
# found still to route), `inserted` ones (the deliveries it wrote) and `queued` ones (those
# that existed already: a rerun after a crash between the commit and the publish).
_ROUTE_EVENTS = ", ".join(
    f"${n}::{kind}[]"
    for n, kind in enumerate(
        ("text", "text", "text", "text", "text", "timestamptz"), len(DELIVERY_INSERT) + 2
    )
)
ROUTE_SQL_POSTGRES = f"""
WITH routed AS ({TO_ROUTE_SQL}), inserted AS (
    INSERT INTO deliveries ({_INSERT_NAMES})
    SELECT {_INSERT_VALUES}
    FROM unnest({_delivery_parameters(2)}) AS u({_INSERT_NAMES})
    WHERE u.notification_id IN (SELECT id FROM routed)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, user_id, channel, priority, state
), logged AS (
    INSERT INTO delivery_events ({", ".join(EVENT_COLUMNS)})
    SELECT e.delivery_id, e.notification_id, e.state, e.provider, e.detail::jsonb, e.created_at
    FROM unnest({_ROUTE_EVENTS}) AS e({", ".join(EVENT_COLUMNS)})
    WHERE e.delivery_id IN (SELECT id FROM inserted)
)
SELECT 'routed' AS kind, id, NULL::text AS user_id, NULL::text AS channel,
       NULL::text AS priority, NULL::text AS state
FROM routed
UNION ALL
SELECT 'inserted', id, user_id, channel, priority, state FROM inserted
UNION ALL
SELECT 'queued', id, user_id, channel, priority, state FROM deliveries
WHERE notification_id = ANY($1::text[]) AND state = '{S.QUEUED.value}'
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

# The workflow runner's question before its tick (WorkflowTimerRepository.anything_due),
# with the claim's conditions (its `_due`): asked once a second by a quiet scheduler,
# it was a SQLAlchemy transaction of three round trips each time.
WORKFLOWS_DUE_SQL = f"""
SELECT EXISTS (SELECT 1 FROM workflow_runs
               WHERE status = '{RunStatus.RUNNING.value}' AND due_at <= $1
                 AND (lease_until IS NULL OR lease_until < $1)) AS due
"""

# The scheduler's question before its pass (SchedulingRepository.anything_due): the pass's
# own conditions, over ix_deliveries_state_due, ix_deliveries_state_lease and
# ix_digests_state_end.
ANYTHING_DUE_SQL = f"""
SELECT (EXISTS (SELECT 1 FROM deliveries WHERE {_in(RELEASE_DUE)} AND due_at <= $1)
     OR EXISTS (SELECT 1 FROM deliveries WHERE {_in(LEASE_EXPIRED_REQUEUE)}
                                          AND lease_until < $1)
     OR EXISTS (SELECT 1 FROM digests WHERE state = 'open' AND window_end <= $1)) AS due
"""
