"""The statements that look for deliveries by state read the partial indexes made for them
(migration 0016), on both backends: a statement whose conditions stop implying its
index's predicate (a guard changed, a state renamed, an `IN` of one value that SQLite does
not match to `=`) would scan every delivery ever sent instead.

Each statement is captured as the repository really runs it and explained by the
database. PostgreSQL is told not to scan tables it could read by an index (its planner
prefers a scan of a table this small), so a scan in its plan means no index could
answer. Which of two partial indexes serves a statement is the planner's choice; the probe's
test holds the due and lease indexes to their own predicates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from herald.domain import DeliveryState
from herald.runtime import Runtime
from herald.storage import Storage
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.native import ANYTHING_DUE_SQL
from herald.storage.records import ProviderReport

Statement = tuple[str, Any]


@contextmanager
def captured(engine: AsyncEngine) -> Iterator[list[Statement]]:
    """Every statement (driver text and parameters) the engine sends, in order."""
    statements: list[Statement] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)


def _reads_deliveries(statement: str) -> bool:
    text = " ".join(statement.split()).upper()
    return "DELIVERIES" in text and text.startswith(("SELECT", "UPDATE", "WITH"))


def _on_postgres(database: Database) -> bool:
    return database.engine.url.get_backend_name() == "postgresql"


async def _plan(database: Database, statement: str, parameters: Any) -> str:
    async with database.transaction() as db:
        if _on_postgres(database):
            await db.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = await db.exec_driver_sql("EXPLAIN " + statement, parameters)
        else:
            rows = await db.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        return "\n".join(str(row[-1]) for row in rows)


def _scans_deliveries(plan: str) -> bool:
    """A full read of deliveries: PostgreSQL's `Seq Scan on deliveries`, SQLite's
    `SCAN deliveries` (an index it reads whole would show as `SCAN deliveries USING ...`)."""
    lines = [line.strip() for line in plan.splitlines()]
    return "Seq Scan on deliveries" in plan or "SCAN deliveries" in lines


def _report(storage: Storage) -> Awaitable[Any]:
    report = ProviderReport(
        delivery_id=None,
        provider_message_id="projects/p/messages/1",
        state=DeliveryState.DELIVERED,
        provider="fcm",
    )
    return storage.feedback.record_provider_events([report])


SWEEPS: list[tuple[str, Callable[[Storage], Awaitable[Any]], set[str]]] = [
    (
        "release due deferrals",
        lambda s: s.scheduling.release_due(10),
        {"ix_deliveries_deferred_due"},
    ),
    # PostgreSQL may read the sending rows of either index: both hold only unsent rows.
    (
        "expire leases",
        lambda s: s.scheduling.expire_leases(10),
        {"ix_deliveries_sending_lease", "ix_deliveries_unsent_updated"},
    ),
    (
        "stale queued rows",
        lambda s: s.scheduling.stale_queued(s.database.clock.now() - timedelta(minutes=5), 10),
        {"ix_deliveries_unsent_updated"},
    ),
    (
        "the operator's backlog",
        lambda s: s.operations.backlog(),
        {"ix_deliveries_unsent_updated", "ix_deliveries_deferred_due"},
    ),
    ("a provider report by message id", _report, {"ix_deliveries_provider_message"}),
]


@pytest.mark.parametrize(("what", "call", "indexes"), SWEEPS, ids=[s[0] for s in SWEEPS])
async def test_each_sweep_reads_its_partial_index(
    runtime: Runtime,
    what: str,
    call: Callable[[Storage], Awaitable[Any]],
    indexes: set[str],
) -> None:
    storage = runtime.storage
    with captured(storage.database.engine) as statements:
        await call(storage)
    reads = [(sql, args) for sql, args in statements if _reads_deliveries(sql)]
    assert reads, f"{what}: no statement read deliveries"
    plans = [await _plan(storage.database, sql, args) for sql, args in reads]
    assert not [plan for plan in plans if _scans_deliveries(plan)], plans
    assert any(index in plan for plan in plans for index in indexes), plans


async def test_the_schedulers_probe_reads_the_due_and_lease_indexes(runtime: Runtime) -> None:
    """The probe a quiet scheduler asks every second runs on the driver, not the engine."""
    database = runtime.storage.database
    at = database.clock.now()
    async with database.native() as native, native.transaction():
        if _on_postgres(database):
            await native.fetch("SET LOCAL enable_seqscan = off")
            rows = await native.fetch("EXPLAIN " + ANYTHING_DUE_SQL, native.at(at))
        else:
            rows = await native.fetch("EXPLAIN QUERY PLAN " + ANYTHING_DUE_SQL, native.at(at))
    plan = "\n".join(str(list(row.values())[-1]) for row in rows)
    assert not _scans_deliveries(plan), plan
    for index in ("ix_deliveries_deferred_due", "ix_deliveries_sending_lease"):
        assert index in plan, plan


def test_the_backlog_condition_names_only_unsent_states() -> None:
    with pytest.raises(ValueError, match="not an unsent state"):
        t.unsent_in(DeliveryState.SENT)
