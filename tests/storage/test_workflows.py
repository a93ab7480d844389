"""The console's list of workflow runs: newest first, keyset-paged, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from herald.clock import FakeClock
from herald.domain.workflows import parse_workflow
from herald.runtime import Runtime
from herald.storage import InvalidCursor, new_id
from herald.storage.workflows import NewRun
from tests.fixtures.activity import explaining

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ONE_SEND = parse_workflow("one-send", {"steps": [{"id": "hello", "type": "send"}]})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def trigger_runs(runtime: Runtime, clock: FakeClock, batches: int, per_batch: int) -> None:
    """`batches` triggers a second apart, each of `per_batch` runs (sharing a created_at)."""
    for batch in range(batches):
        await runtime.storage.workflows.trigger(
            [NewRun(new_id(), ONE_SEND, "u", f"k{batch}-{n}", "hash", {}) for n in range(per_batch)]
        )
        clock.advance(1)


async def test_runs_are_listed_newest_first_and_every_one_once(
    runtime: Runtime, clock: FakeClock
) -> None:
    await trigger_runs(runtime, clock, batches=5, per_batch=3)
    seen, cursor = [], None
    while True:
        page = await runtime.storage.workflows.runs(4, cursor)
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len({r.id for r in seen}) == len(seen) == 15
    created = [r.created_at for r in seen]
    assert created == sorted(created, reverse=True)
    assert created[0] == START.replace(second=4)
    assert {r.status.value for r in seen} == {"running"}
    assert {r.workflow_key for r in seen} == {"one-send"}
    with pytest.raises(InvalidCursor):
        await runtime.storage.workflows.runs(4, "not-a-cursor")


async def test_a_page_of_runs_walks_an_index_without_sorting(
    runtime: Runtime, clock: FakeClock, backend: str
) -> None:
    await trigger_runs(runtime, clock, batches=50, per_batch=40)
    database = runtime.storage.database
    if backend == "production":
        async with database.transaction() as db:
            await db.execute(sa.text("ANALYZE workflow_runs"))
    first = await runtime.storage.workflows.runs(50, None)
    with explaining(database, "SELECT workflow_runs.id") as plans:
        await runtime.storage.workflows.runs(50, first.next_cursor)
    (plan,) = plans
    if backend == "production":
        assert "Sort" not in plan, plan
    else:
        assert "TEMP B-TREE" not in plan, plan
