"""Workflow timers under concurrency, on both backends: schedulers racing over due runs do
each step once, and a scheduler killed holding runs leaves them to the next one once its
lease runs out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from herald.clock import FakeClock
from herald.domain.workflows import advance, parse_workflow
from herald.runtime import Runtime
from herald.storage import Storage, new_id, open_storage
from herald.storage import schema as t
from herald.storage.workflows import NewRun
from herald.workflows.runner import WorkflowRunner

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TWO_SENDS = parse_workflow(
    "two-sends",
    {
        "steps": [
            {"id": "first", "type": "send", "channels": ["in_app"]},
            {"id": "second", "type": "send", "channels": ["in_app"]},
        ]
    },
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def second_storage(runtime: Runtime, clock: FakeClock) -> AsyncIterator[Storage]:
    """Another scheduler's own connections to the same database."""
    storage = open_storage(runtime.settings.effective_database_url, clock)
    try:
        yield storage
    finally:
        await storage.database.close()


async def trigger_runs(runtime: Runtime, count: int) -> list[str]:
    runs = [
        NewRun(new_id(), TWO_SENDS, f"user-{n}", "race", "hash", {"title": "hi"})
        for n in range(count)
    ]
    for start in range(0, count, 1000):
        await runtime.storage.workflows.trigger(runs[start : start + 1000])
    return [run.id for run in runs]


async def workflow_notifications(runtime: Runtime) -> int:
    async with runtime.storage.database.reading() as db:
        count = await db.scalar(
            sa.select(sa.func.count())
            .select_from(t.notifications)
            .where(t.notifications.c.idempotency_key.like("workflow:%"))
        )
    return int(count or 0)


async def test_two_schedulers_racing_over_2000_due_runs_do_each_step_once(
    runtime: Runtime, second_storage: Storage, clock: FakeClock
) -> None:
    await trigger_runs(runtime, 2000)
    runners = [
        WorkflowRunner(runtime.storage.workflow_timers, clock, batch=100),
        WorkflowRunner(second_storage.workflow_timers, clock, batch=100),
    ]
    done = await asyncio.gather(*(runner.tick() for runner in runners))
    assert sum(done) == 4000  # two steps per run, each done by one of the two
    assert await workflow_notifications(runtime) == 4000
    assert await runtime.storage.workflow_timers.pending() == 0
    assert [await runner.tick() for runner in runners] == [0, 0]


async def test_a_killed_schedulers_runs_are_recovered_when_its_lease_runs_out(
    runtime: Runtime, second_storage: Storage, clock: FakeClock
) -> None:
    [run_id] = await trigger_runs(runtime, 1)
    # The first scheduler takes the run and dies before it applies anything.
    [held] = await runtime.storage.workflow_timers.claim_due(10, lease_seconds=60)
    survivor = WorkflowRunner(second_storage.workflow_timers, clock, lease_seconds=60)
    assert await survivor.tick() == 0  # leased: not taken from a live scheduler
    clock.advance(61)
    assert await survivor.tick() == 2
    view = await runtime.storage.workflows.run(run_id)
    assert view is not None
    assert view.status.value == "completed"
    # The dead scheduler's late apply (it was only slow) changes nothing.
    state = await runtime.storage.workflow_timers.state(held)
    late = advance(
        held.id,
        held.workflow,
        held.position,
        state.progress,
        state.facts,
        now=clock.now(),
        zone=state.zone,
        run_started_at=held.created_at,
    )
    assert await runtime.storage.workflow_timers.apply(held, late, []) is False
    assert await workflow_notifications(runtime) == 2
