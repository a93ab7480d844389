"""Rows written and statements run by Herald over the measured window, from PostgreSQL's
own counters in the bench's (fresh, private) database.

- Rows: `pg_stat_database` (tup_inserted, tup_updated, tup_deleted) of the bench database,
  deltas between two snapshots. Every tuple a statement writes counts, also inside a CTE,
  a trigger or a COPY. Backends report their counts at most once a second, and an idle
  backend with counts pending reports them 10 s after going idle (PG 15:
  PGSTAT_MIN_INTERVAL, PGSTAT_IDLE_INTERVAL), so each snapshot waits until the counters
  are quiet and at least `STATS_SETTLE_S` passed since the last write it waits for.
- Statements: `pg_stat_statements` (sum of `calls` deltas for the bench database's dbid,
  each execution a call: one `executemany` of 200 rows is 200), read as the window starts
  and ends (it counts each statement as it ends, with no delay; so Herald's polling while
  the window runs is in, and nothing of the settling), when the server loads the
  extension (`shared_preload_libraries`; scripts/services.sh configures it). Transaction
  control (BEGIN, COMMIT, ...) is counted apart. The harness's own statements carry the
  comment `/* herald-bench */` and are left out: pg_stat_statements keeps the text of an
  entry's first execution, and the harness's statements have shapes Herald never runs.
  When the extension is not loaded, statements are None and a note says why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from herald.bench.db import HARNESS_MARK

MARK = HARNESS_MARK
STATS_SETTLE_S = 11.0  # PostgreSQL 15's PGSTAT_IDLE_INTERVAL (10 s), and a second
STATS_GIVE_UP_S = 40.0  # a periodic writer would keep the counters moving for ever
TRANSACTION_CONTROL = ("begin", "commit", "rollback", "savepoint", "release", "start")


@dataclass(frozen=True)
class Snapshot:
    inserted: int
    updated: int
    deleted: int


Calls = dict[int, tuple[str, int]]  # queryid -> (kind, calls)


class PgCounters:
    """Snapshots of the bench database's counters over the harness's connection."""

    def __init__(self, connection: asyncpg.Connection, database: str) -> None:
        self.connection = connection
        self.database = database
        self.statements_note: str | None = None
        self.notes: list[str] = []
        self._dbid: int | None = None

    async def setup(self) -> None:
        """Creates the pg_stat_statements extension in the bench database when the
        server loads its library; otherwise notes why statements are not counted."""
        self._dbid = int(
            await self.connection.fetchval(
                MARK + "SELECT oid FROM pg_database WHERE datname = $1", self.database
            )
        )
        loaded = await self.connection.fetchval(
            MARK + "SELECT current_setting('shared_preload_libraries')"
        )
        if "pg_stat_statements" not in str(loaded).split(","):
            self.statements_note = (
                "statements per delivery: not counted, the server does not load "
                "pg_stat_statements (shared_preload_libraries; scripts/services.sh sets it, "
                "a running server needs a restart)"
            )
            return
        try:
            await self.connection.execute(
                MARK + "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
            )
        except asyncpg.PostgresError as error:
            self.statements_note = f"statements per delivery: not counted ({error})"

    async def _read(self) -> Snapshot:
        await self.connection.execute(MARK + "SELECT pg_stat_force_next_flush()")
        row = await self.connection.fetchrow(
            MARK + "SELECT tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
            "WHERE datid = $1",
            self._dbid,
        )
        assert row is not None
        return Snapshot(int(row[0]), int(row[1]), int(row[2]))

    async def calls(self) -> Calls | None:
        """pg_stat_statements' calls per statement now (it counts as each statement ends,
        with no delay), None when the extension is not there."""
        if self.statements_note is not None:
            return None
        rows = await self.connection.fetch(
            MARK + "SELECT queryid, min(query) AS query, sum(calls) AS calls "
            "FROM pg_stat_statements WHERE dbid = $1 AND query NOT LIKE $2 "
            "GROUP BY queryid",
            self._dbid,
            MARK.strip() + "%",
        )
        return {int(r["queryid"]): (_kind(r["query"]), int(r["calls"])) for r in rows}

    async def settled(self, since: float) -> Snapshot:
        """A snapshot once the row counters stopped moving and `STATS_SETTLE_S` passed
        since `since` (a time.perf_counter() when the writes of interest had ended); after
        `STATS_GIVE_UP_S`, the last one, with a note."""
        last = await self._read()
        while True:
            if time.perf_counter() > since + STATS_GIVE_UP_S:
                self.notes.append(
                    f"rows written: PostgreSQL's counters still moved {STATS_GIVE_UP_S:.0f} s "
                    "after the writes measured; the figure includes what moved them"
                )
                return last
            await asyncio.sleep(max(0.5, min(1.0, since + STATS_SETTLE_S - time.perf_counter())))
            now = await self._read()
            if now == last and time.perf_counter() >= since + STATS_SETTLE_S:
                return now
            last = now


def _kind(query: str) -> str:
    words = query.lstrip("( \n\t").split(None, 1)
    word = words[0].lower() if words else ""
    if word in TRANSACTION_CONTROL:
        return "transaction"
    if word in ("select", "insert", "update", "delete", "with", "copy", "merge"):
        return word
    return "other"


def written(
    before: Snapshot, after: Snapshot, deliveries: int, notifications: int
) -> dict[str, Any]:
    """The report's `rows_written` block."""
    inserted = after.inserted - before.inserted
    updated = after.updated - before.updated
    deleted = after.deleted - before.deleted
    total = inserted + updated + deleted
    return {
        "total": total,
        "inserted": inserted,
        "updated": updated,
        "deleted": deleted,
        "per_delivery": _ratio(total, deliveries),
        "per_notification": _ratio(total, notifications),
        "source": "pg_stat_database",
    }


def statements(
    before: Calls | None, after: Calls | None, deliveries: int, notifications: int
) -> dict[str, Any] | None:
    """The report's `statements` block (None without pg_stat_statements)."""
    if before is None or after is None:
        return None
    by_kind: dict[str, int] = {}
    for queryid, (kind, calls) in after.items():
        spent = calls - before.get(queryid, (kind, 0))[1]
        if spent > 0:
            by_kind[kind] = by_kind.get(kind, 0) + spent
    total = sum(by_kind.values())
    without_tx = total - by_kind.get("transaction", 0)
    return {
        "total": total,
        "per_delivery": _ratio(total, deliveries),
        "per_notification": _ratio(total, notifications),
        "without_transaction_control": without_tx,
        "without_transaction_control_per_delivery": _ratio(without_tx, deliveries),
        "by_kind": dict(sorted(by_kind.items())),
        "source": "pg_stat_statements",
    }


def _ratio(count: int, per: int) -> float:
    return round(count / per, 3) if per else 0.0
