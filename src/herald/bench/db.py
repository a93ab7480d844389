"""The benchmark's own view of Herald's database: progress counts, accept times, and the
naive baseline's queries. SQLite (the embedded file, read beside the running Herald in WAL
mode) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import abc
import asyncio
import sqlite3
from datetime import UTC, datetime
from typing import Any

import asyncpg

FINAL_STATES = ("sent", "delivered", "failed", "undeliverable", "skipped", "unknown")
_FINAL_SQL = ", ".join(f"'{s}'" for s in FINAL_STATES)
NAIVE_TABLE = "bench_naive_sent"
# The comment that marks the harness's own statements, left out of Herald's statement count.
HARNESS_MARK = "/* herald-bench */ "


class BenchDb(abc.ABC):
    @staticmethod
    async def open(url: str) -> BenchDb:
        if url.startswith("sqlite"):
            return SqliteBenchDb(url.split("///", 1)[1])
        return await PostgresBenchDb.connect(url)

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def final_count(self) -> int:
        """Deliveries in a final state (sent, delivered, failed, ...)."""

    @abc.abstractmethod
    async def bench_deliveries(self, key_prefix: str) -> list[tuple[str, str, datetime]]:
        """(delivery id, state, accepted at) of the notifications whose idempotency key
        starts with `key_prefix`."""

    @abc.abstractmethod
    async def broadcast_deliveries(self, broadcast_id: str) -> list[tuple[str, str, datetime]]:
        """(delivery id, state, accepted at) of one broadcast's recipients."""

    # The naive baseline: one statement at a time, as the article's loop does.
    @abc.abstractmethod
    async def naive_setup(self) -> None: ...

    @abc.abstractmethod
    async def naive_tokens(self, user_id: str) -> list[str]: ...

    @abc.abstractmethod
    async def naive_already_sent(self, notification_id: str) -> bool: ...

    @abc.abstractmethod
    async def naive_record(self, notification_id: str, results: list[tuple[str, int]]) -> None: ...


def _utc(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class SqliteBenchDb(BenchDb):
    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._naive: sqlite3.Connection | None = None

    def _read(self, sql: str, *args: Any) -> list[Any]:
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        return self._reader.execute(sql, args).fetchall()

    async def close(self) -> None:
        for connection in (self._reader, self._naive):
            if connection is not None:
                connection.close()

    async def final_count(self) -> int:
        rows = await asyncio.to_thread(
            self._read, f"SELECT count(*) FROM deliveries WHERE state IN ({_FINAL_SQL})"
        )
        return int(rows[0][0])

    async def bench_deliveries(self, key_prefix: str) -> list[tuple[str, str, datetime]]:
        rows = await asyncio.to_thread(
            self._read,
            "SELECT d.id, d.state, n.created_at FROM deliveries d "
            "JOIN notifications n ON n.id = d.notification_id WHERE n.idempotency_key LIKE ?",
            key_prefix + "%",
        )
        return [(r[0], r[1], _utc(r[2])) for r in rows]

    async def broadcast_deliveries(self, broadcast_id: str) -> list[tuple[str, str, datetime]]:
        rows = await asyncio.to_thread(
            self._read,
            "SELECT d.id, d.state, n.created_at FROM deliveries d "
            "JOIN notifications n ON n.id = d.notification_id WHERE n.broadcast_id = ?",
            broadcast_id,
        )
        return [(r[0], r[1], _utc(r[2])) for r in rows]

    # The baseline runs its statements synchronously, as a plain loop would.
    def _conn(self) -> sqlite3.Connection:
        if self._naive is None:
            self._naive = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._naive.execute("PRAGMA journal_mode=WAL")
        return self._naive

    async def naive_setup(self) -> None:
        self._conn().execute(
            f"CREATE TABLE IF NOT EXISTS {NAIVE_TABLE} (notification_id TEXT NOT NULL, "
            "token TEXT NOT NULL, status INTEGER NOT NULL, sent_at TEXT NOT NULL)"
        )
        self._conn().execute(
            f"CREATE INDEX IF NOT EXISTS ix_{NAIVE_TABLE} ON {NAIVE_TABLE} (notification_id)"
        )

    async def naive_tokens(self, user_id: str) -> list[str]:
        rows = self._conn().execute(
            "SELECT token FROM devices WHERE user_id = ? AND active", (user_id,)
        )
        return [r[0] for r in rows.fetchall()]

    async def naive_already_sent(self, notification_id: str) -> bool:
        row = (
            self._conn()
            .execute(f"SELECT 1 FROM {NAIVE_TABLE} WHERE notification_id = ?", (notification_id,))
            .fetchone()
        )
        return row is not None

    async def naive_record(self, notification_id: str, results: list[tuple[str, int]]) -> None:
        now = datetime.now(UTC).isoformat()
        connection = self._conn()
        connection.execute("BEGIN")
        connection.executemany(
            f"INSERT INTO {NAIVE_TABLE} VALUES (?, ?, ?, ?)",
            [(notification_id, token, status, now) for token, status in results],
        )
        connection.execute("COMMIT")


class PostgresBenchDb(BenchDb):
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, url: str) -> PostgresBenchDb:
        return cls(await asyncpg.connect(url))

    async def close(self) -> None:
        await self.connection.close()

    async def final_count(self) -> int:
        # Marked: the harness's polls are not Herald's statements (herald.bench.pgstats).
        return int(
            await self.connection.fetchval(
                f"{HARNESS_MARK}SELECT count(*) FROM deliveries WHERE state IN ({_FINAL_SQL})"
            )
        )

    async def bench_deliveries(self, key_prefix: str) -> list[tuple[str, str, datetime]]:
        rows = await self.connection.fetch(
            HARNESS_MARK + "SELECT d.id, d.state, n.created_at FROM deliveries d "
            "JOIN notifications n ON n.id = d.notification_id WHERE n.idempotency_key LIKE $1",
            key_prefix + "%",
        )
        return [(r[0], r[1], _utc(r[2])) for r in rows]

    async def broadcast_deliveries(self, broadcast_id: str) -> list[tuple[str, str, datetime]]:
        rows = await self.connection.fetch(
            HARNESS_MARK + "SELECT d.id, d.state, n.created_at FROM deliveries d "
            "JOIN notifications n ON n.id = d.notification_id WHERE n.broadcast_id = $1",
            broadcast_id,
        )
        return [(r[0], r[1], _utc(r[2])) for r in rows]

    async def naive_setup(self) -> None:
        await self.connection.execute(
            f"CREATE TABLE IF NOT EXISTS {NAIVE_TABLE} (notification_id text NOT NULL, "
            "token text NOT NULL, status integer NOT NULL, sent_at timestamptz NOT NULL); "
            f"CREATE INDEX IF NOT EXISTS ix_{NAIVE_TABLE} ON {NAIVE_TABLE} (notification_id)"
        )

    async def naive_tokens(self, user_id: str) -> list[str]:
        rows = await self.connection.fetch(
            "SELECT token FROM devices WHERE user_id = $1 AND active", user_id
        )
        return [r[0] for r in rows]

    async def naive_already_sent(self, notification_id: str) -> bool:
        row = await self.connection.fetchval(
            f"SELECT 1 FROM {NAIVE_TABLE} WHERE notification_id = $1", notification_id
        )
        return row is not None

    async def naive_record(self, notification_id: str, results: list[tuple[str, int]]) -> None:
        async with self.connection.transaction():
            await self.connection.executemany(
                f"INSERT INTO {NAIVE_TABLE} VALUES ($1, $2, $3, now())",
                [(notification_id, token, status) for token, status in results],
            )
