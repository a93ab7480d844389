"""The statements that look for deliveries by state read the partial indexes made for them
(migration 0016), on both backends. A statement whose conditions stop implying its
index's predicate (a guard changed, a state renamed, an `IN` of one value, which SQLite
does not match to `=`) would scan every delivery ever sent instead.

Each statement is explained as the repository really runs it. Which of two partial
indexes serves a statement is PostgreSQL's choice, by the statistics; SQLite, with none,
takes the one made for each condition of the scheduler's probe."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from herald.domain import DeliveryState
from herald.runtime import Runtime
from herald.storage import Storage
from herald.storage import schema as t
from herald.storage.native import ANYTHING_DUE_SQL
from herald.storage.records import ProviderReport
from tests.fixtures.activity import explain_prefix, explaining


def _reads_deliveries(statement: str) -> bool:
    text = " ".join(statement.split()).upper()
    return "DELIVERIES" in text and text.startswith(("SELECT", "UPDATE", "WITH"))


def _scans_deliveries(plan: str) -> bool:
    """A full read of deliveries: PostgreSQL's `Seq Scan on deliveries`, SQLite's
    `SCAN deliveries` (an index it reads whole would show as `SCAN deliveries USING ...`)."""
    lines = [line.strip() for line in plan.splitlines()]
    return "Seq Scan on deliveries" in plan or any(
        line.endswith("SCAN deliveries") for line in lines
    )


def _report(storage: Storage) -> Awaitable[Any]:
    report = ProviderReport(
        delivery_id=None,
        provider_message_id="projects/p/messages/1",
        state=DeliveryState.DELIVERED,
        provider="fcm",
    )
    return storage.feedback.record_provider_events([report])


def _stale_queued(storage: Storage) -> Awaitable[Any]:
    return storage.scheduling.stale_queued(storage.database.clock.now() - timedelta(minutes=5), 10)


DEFERRED, SENDING = "ix_deliveries_deferred_due", "ix_deliveries_sending_lease"
UNSENT, PROVIDER = "ix_deliveries_unsent_updated", "ix_deliveries_provider_message"
SWEEPS: list[tuple[str, Callable[[Storage], Awaitable[Any]], set[str]]] = [
    # PostgreSQL may read a state's rows from either partial index that holds them, as the
    # statistics earlier tests left decide.
    ("release due deferrals", lambda s: s.scheduling.release_due(10), {DEFERRED, UNSENT}),
    ("expire leases", lambda s: s.scheduling.expire_leases(10), {SENDING, UNSENT}),
    ("stale queued rows", _stale_queued, {UNSENT}),
    ("the operator's backlog", lambda s: s.operations.backlog(), {UNSENT, DEFERRED}),
    ("a provider report by message id", _report, {PROVIDER}),
]


@pytest.mark.parametrize(("what", "call", "indexes"), SWEEPS, ids=[s[0] for s in SWEEPS])
async def test_each_sweep_reads_a_partial_index(
    runtime: Runtime,
    what: str,
    call: Callable[[Storage], Awaitable[Any]],
    indexes: set[str],
) -> None:
    storage = runtime.storage
    with explaining(storage.database, _reads_deliveries, without_seqscan=True) as plans:
        await call(storage)
    assert plans, f"{what}: no statement read deliveries"
    assert not [plan for plan in plans if _scans_deliveries(plan)], plans
    assert any(index in plan for plan in plans for index in indexes), plans


async def test_the_schedulers_probe_reads_the_due_and_lease_indexes(
    runtime: Runtime, backend: str
) -> None:
    """The probe a quiet scheduler asks every second runs on the driver, not the engine."""
    database = runtime.storage.database
    async with database.native() as native, native.transaction():
        if backend == "production":
            await native.fetch("SET LOCAL enable_seqscan = off")
        rows = await native.fetch(
            f"{explain_prefix(database)} {ANYTHING_DUE_SQL}", native.at(database.clock.now())
        )
    plan = "\n".join(str(list(row.values())[-1]) for row in rows)
    assert not _scans_deliveries(plan), plan
    used = set(re.findall(r"ix_deliveries_\w+", plan))
    if backend == "embedded":
        # SQLite, with no statistics, takes the index made for each condition; that it can
        # match them term by term shows that PostgreSQL, which proves predicates, can too.
        assert used == {DEFERRED, SENDING}, plan
    else:
        # PostgreSQL weighs the indexes by the statistics earlier tests left, and may read
        # a state's rows from either partial index that holds them.
        assert used, plan
        assert used <= {DEFERRED, SENDING, UNSENT}, plan


def test_the_backlog_condition_names_only_unsent_states() -> None:
    with pytest.raises(ValueError, match="not an unsent state"):
        t.unsent_in(DeliveryState.SENT)
