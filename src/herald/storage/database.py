"""One database: its engine, its dialect, transactions and reads, migrations, health.

The repositories (one per role: see `herald.storage`) share one `Database`; none of them
opens connections of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from herald.clock import SYSTEM_CLOCK, Clock
from herald.outages import is_outage
from herald.storage.dialect import Dialect, PlanMode, dialect_for
from herald.storage.native import Native


class Database:
    # Rows per multi-row statement (SQLite allows 32766 bound parameters).
    batch_rows = 500

    def __init__(
        self,
        engine: AsyncEngine,
        dialect: Dialect,
        clock: Clock = SYSTEM_CLOCK,
        *,
        retention_days: int = 30,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.clock = clock
        self.retention_days = retention_days
        self._read_engine = engine.execution_options(**dialect.read_options())

    @classmethod
    def open(
        cls,
        url: str,
        clock: Clock = SYSTEM_CLOCK,
        *,
        retention_days: int = 30,
        plans: PlanMode = PlanMode.PER_EXECUTION,
    ) -> Database:
        """The database at sqlite:///path or postgresql://user:pw@host/db."""
        dialect = dialect_for(url, plans)
        return cls(dialect.create_engine(url), dialect, clock, retention_days=retention_days)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads only: on PostgreSQL every statement commits alone."""
        return self._read_engine.connect()

    @asynccontextmanager
    async def native(self) -> AsyncIterator[Native]:
        """A pooled connection's driver, for the hot statements (herald.storage.native).
        A connection that failed with an outage is invalidated, as SQLAlchemy does for its
        own statements, so the pool does not hand it out again."""
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            try:
                yield self.dialect.native(raw.driver_connection)
            except Exception as error:
                if is_outage(error):
                    await connection.invalidate(error)
                raise

    @asynccontextmanager
    async def native_transaction(self) -> AsyncIterator[tuple[Native, AsyncConnection]]:
        """One transaction on the driver (herald.storage.native), and the SQLAlchemy
        connection over the same driver connection, for the Core statements that must run
        inside it. That connection begins no transaction of its own: on PostgreSQL it is
        the readers' autocommit one (else asyncpg would nest a savepoint), on SQLite the
        driver's transaction is the only one either way."""
        async with self._read_engine.connect() as connection:
            raw = await connection.get_raw_connection()
            native = self.dialect.native(raw.driver_connection)
            try:
                async with native.transaction():
                    yield native, connection
            except Exception as error:
                if is_outage(error):
                    await connection.invalidate(error)
                raise

    def point_at(self, engine: AsyncEngine) -> None:
        """Use another engine from now on (tests: one whose connections the server
        terminated)."""
        self.engine = engine
        self._read_engine = engine.execution_options(**self.dialect.read_options())

    async def migrate(self) -> None:
        from herald.storage.migrate import upgrade

        await upgrade(self.engine)

    async def ping(self) -> bool:
        try:
            async with self.reading() as connection:
                await connection.execute(sa.text("SELECT 1"))
        except Exception:  # any driver error means "not ready"
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()

    def describe(self) -> str:
        url = self.engine.url
        return f"{url.get_backend_name()} {url.render_as_string(hide_password=True)}"
