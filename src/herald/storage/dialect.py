"""What differs between SQLite and PostgreSQL, and nothing else.

Every repository writes its statements once, in SQLAlchemy Core (or, for the hot ones, as
one SQL text in herald.storage.native), and asks the dialect for the few things the two
databases do differently: the INSERT that knows ON CONFLICT, how a list of ids is bound,
row locks that skip what another process holds, bulk loading of the delivery log (COPY),
its partitions, how the engine is opened, and the driver connection the hot statements run
on. No other module checks which database it is talking to.
"""

from __future__ import annotations

import abc
import os
import stat
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from herald.storage import schema as t
from herald.storage.native import AsyncpgNative, Native, SqliteNative
from herald.util import json_dumps


class Dialect(abc.ABC):
    name: str

    @abc.abstractmethod
    def native(self, driver_connection: Any) -> Native:
        """The hot statements' view of a driver connection (herald.storage.native)."""

    @abc.abstractmethod
    def create_engine(self, url: str) -> AsyncEngine:
        """The engine for a sqlite:/// or postgresql:// URL."""

    def read_options(self) -> dict[str, Any]:
        """Execution options of the engine used for reads only."""
        return {}

    @abc.abstractmethod
    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""

    def among(self, column: sa.ColumnElement[Any], values: Iterable[Any]) -> Any:
        """`column IN values`."""
        return column.in_(list(values))

    def lock_skip(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the selected rows, skipping those another transaction holds (so several
        relays or schedulers share one queue). SQLite runs one writer at a time."""
        return query

    async def plan_queue_by_index(self, db: AsyncConnection) -> None:  # noqa: B027
        """Make the rest of this transaction read a queue table through its indexes."""

    @abc.abstractmethod
    async def native_in_transaction(self, db: AsyncConnection) -> Native | None:
        """The driver of `db` for hot statements inside the transaction `db` is in, or None
        when a driver statement would not be part of it (then use SQLAlchemy)."""

    async def insert_events(self, db: AsyncConnection, events: Sequence[dict[str, Any]]) -> None:
        """Append rows to the delivery log."""
        if events:
            await db.execute(t.delivery_events.insert(), list(events))

    async def drop_expired_events(self, db: AsyncConnection, now: datetime, days: int) -> None:
        """Housekeeping: the delivery log keeps `days` days."""
        cutoff = now - timedelta(days=days)
        await db.execute(t.delivery_events.delete().where(t.delivery_events.c.created_at < cutoff))


class SqliteDialect(Dialect):
    """The embedded backend: SQLite in WAL mode, one connection shared by the process.

    SQLite takes one writer at a time; a single pooled connection serialises Herald's own
    transactions instead of letting them collide on the file lock."""

    name = "sqlite"

    def create_engine(self, url: str) -> AsyncEngine:
        async_url = url.replace("sqlite://", "sqlite+aiosqlite://", 1)
        path = async_url.split("///", 1)[1] if "///" in async_url else ""
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_files(Path(path.split("?", 1)[0]))
        engine = create_async_engine(
            async_url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
        )
        event.listen(engine.sync_engine, "connect", _pragmas)
        return engine

    def native(self, driver_connection: Any) -> Native:
        return SqliteNative(driver_connection)

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    async def native_in_transaction(self, db: AsyncConnection) -> Native | None:
        # Python's sqlite3 begins the transaction before the first write on the connection,
        # whoever sends it, and SQLAlchemy's commit or rollback ends it.
        driver = (await db.get_raw_connection()).driver_connection
        return SqliteNative(driver, in_transaction=True)


class PlanMode(StrEnum):
    """How PostgreSQL plans the prepared statements of a process's connections
    (HERALD_POSTGRES_PLANS; docs/operations.md, "Query plans")."""

    # A plan for each execution: for processes that run ad-hoc reads (API, console,
    # scheduler, tools), whose best plan depends on the values.
    PER_EXECUTION = "per_execution"
    # One plan per statement and connection, made once: for the relay, router and worker
    # processes, which run a few key and index lookups thousands of times a second.
    GENERIC = "generic"


# A PostgreSQL connection's settings by plan mode (docs/benchmarks.md, "Figures behind code
# choices"):
# - No JIT: Herald's statements are short, and the cost estimates of some (the relay's
#   pass: a lateral read per lane) pass jit_above_cost, so executions compiled code they
#   then ran once.
# - Never PostgreSQL's default, which settles on a generic plan after five executions and
#   keeps it until the table is analyzed again. Made while notifications and deliveries
#   were nearly empty (a new database, or a process started early in a burst), that plan
#   scans the whole table for a batch looked up by id, and goes on doing so as the table
#   grows, for as long as autovacuum takes to come by. Either each execution is planned
#   for the table as it is, or the generic plan is made without sequential scans: every
#   statement of the hot path reads by an index, and planning was most of PostgreSQL's
#   CPU per delivery at a light load.
SERVER_SETTINGS: dict[PlanMode, dict[str, str]] = {
    PlanMode.PER_EXECUTION: {"jit": "off", "plan_cache_mode": "force_custom_plan"},
    PlanMode.GENERIC: {
        "jit": "off",
        "plan_cache_mode": "force_generic_plan",
        "enable_seqscan": "off",
    },
}


class PostgresDialect(Dialect):
    """The production backend: PostgreSQL through asyncpg, pooled. Queues are read with
    FOR UPDATE SKIP LOCKED, ids are bound as one array, the delivery log is loaded with
    COPY and partitioned by day, and old partitions are dropped whole."""

    name = "postgresql"
    partitions_ahead = 3

    def __init__(self, pool_size: int = 10, plans: PlanMode = PlanMode.PER_EXECUTION) -> None:
        self.pool_size = pool_size
        self.plans = plans

    def create_engine(self, url: str) -> AsyncEngine:
        return create_async_engine(
            f"postgresql+asyncpg://{url.split('://', 1)[1]}",
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            # No pool_pre_ping: it cost a round trip and CPU on every transaction
            # (docs/benchmarks.md, "Figures behind code choices"). A connection that died
            # with the server fails its statement instead; SQLAlchemy then invalidates the
            # pool, the role retries its batch and the API answers 503 with Retry-After
            # (safe to repeat).
            pool_recycle=3600,
            connect_args={"server_settings": SERVER_SETTINGS[self.plans]},
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
        )

    def read_options(self) -> dict[str, Any]:
        # Reads run outside a transaction: at READ COMMITTED each statement sees its own
        # snapshot either way, and the BEGIN and ROLLBACK around a read were two of its
        # three round trips.
        return {"isolation_level": "AUTOCOMMIT"}

    def native(self, driver_connection: Any) -> Native:
        return AsyncpgNative(driver_connection)

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def among(self, column: sa.ColumnElement[Any], values: Iterable[Any]) -> Any:
        """`column = ANY(:array)`: one bound array, where an IN list of 500 ids was
        re-rendered on every batch (docs/benchmarks.md, "Figures behind code choices")."""
        array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
        return column == sa.any_(array)

    def lock_skip(self, query: sa.Select[Any]) -> sa.Select[Any]:
        return query.with_for_update(skip_locked=True)

    async def plan_queue_by_index(self, db: AsyncConnection) -> None:
        # A queue table's statistics describe it as it was when autovacuum last ran, often
        # just drained: 0 rows in many pages. PostgreSQL then estimates 1 row for every
        # lookup and prefers a sequential scan of the whole backlog to deleting 500 rows
        # by primary key (tests/storage/test_outbox.py builds that state).
        await db.execute(sa.text("SET LOCAL enable_seqscan = off"))

    async def insert_events(self, db: AsyncConnection, events: Sequence[dict[str, Any]]) -> None:
        """COPY instead of a multi-row INSERT: the delivery log is append-only and its
        hottest table; COPY costs a fraction of the client CPU and wall time
        (docs/benchmarks.md, "Figures behind code choices")."""
        if not events:
            return
        native = await self.native_in_transaction(db)
        if native is None:
            await super().insert_events(db, events)
            return
        await native.append_events(events)

    async def native_in_transaction(self, db: AsyncConnection) -> Native | None:
        driver = (await db.get_raw_connection()).driver_connection
        if driver is None or not driver.is_in_transaction():
            # SQLAlchemy begins lazily, on its first statement: a driver statement sent
            # before that would commit on its own, outside the caller's transaction.
            return None
        return AsyncpgNative(driver)

    async def drop_expired_events(self, db: AsyncConnection, now: datetime, days: int) -> None:
        """Create the coming days' partitions of the delivery log; drop expired ones."""
        today = now.astimezone(UTC).date()
        await db.execute(sa.text("SELECT pg_advisory_xact_lock(7263001)"))
        for offset in range(-1, self.partitions_ahead + 1):
            await db.execute(sa.text(_create_partition(today + timedelta(days=offset))))
        cutoff = today - timedelta(days=days)
        for name in await event_partitions(db):
            day = _partition_day(name)
            if day is not None and day < cutoff:
                await db.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))


def dialect_for(url: str, plans: PlanMode = PlanMode.PER_EXECUTION) -> Dialect:
    """The dialect of a database URL; `plans` says how PostgreSQL plans (SQLite: unused)."""
    if url.startswith("sqlite"):
        return SqliteDialect()
    if url.startswith(("postgresql", "postgres")):
        return PostgresDialect(plans=plans)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


async def event_partitions(db: AsyncConnection) -> list[str]:
    """The delivery log's partitions (PostgreSQL), oldest first."""
    rows = await db.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'delivery_events' "
            "ORDER BY 1"
        )
    )
    return [row[0] for row in rows]


def _partition_name(day: date) -> str:
    return f"delivery_events_{day:%Y%m%d}"


def _partition_day(name: str) -> date | None:
    try:
        return datetime.strptime(name.removeprefix("delivery_events_"), "%Y%m%d").date()
    except ValueError:
        return None


def _create_partition(day: date) -> str:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    return (
        f'CREATE TABLE IF NOT EXISTS "{_partition_name(day)}" PARTITION OF delivery_events '
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def _private_files(database: Path) -> None:
    """The database holds API key hashes, addresses and (unless it comes from the
    environment) the token-signing secret: only the owner may read it. A directory Herald
    creates is 0700; the database file is created 0600 before SQLite opens it, and SQLite
    gives its -wal and -shm files the database's permissions. Files of an older Herald are
    narrowed to 0600 on the next start."""
    directory = database.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is masked by the umask
    if not database.exists():
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    for name in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if name.exists() and stat.S_IMODE(name.stat().st_mode) & 0o077:
            name.chmod(0o600)


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=10000",
        "temp_store=MEMORY",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
