"""Workflow timers under concurrency, on both backends: schedulers racing over due runs do
each step once, and a scheduler killed holding runs leaves them to the next one once its
lease runs out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from herald.clock import FakeClock
from herald.domain.engagement import Engagement
from herald.domain.workflows import advance, parse_workflow
from herald.runtime import Runtime
from herald.storage import Storage, new_id, open_storage
from herald.storage import schema as t
from herald.storage.workflows import NewRun
from herald.workflows.runner import WorkflowRunner, step_notification

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


ESCALATION = parse_workflow(
    "escalation",
    {
        "steps": [
            {"id": "push", "type": "send", "channels": ["in_app"]},
            {"id": "pause", "type": "delay", "seconds": 60},
            {"id": "email", "type": "send", "if": {"step": "push", "not": ["opened"]}},
        ]
    },
)


@pytest.mark.parametrize("report", ["before-the-step-is-taken", "after-it-was-taken"])
async def test_an_engagement_report_racing_the_escalation_is_seen_or_too_late(
    runtime: Runtime, clock: FakeClock, report: str
) -> None:
    """The report either lands before the step's facts are read (the step is skipped) or
    after (the step was decided and sends): one of the two, never both."""
    [run] = await runtime.storage.workflows.trigger(
        [NewRun(new_id(), ESCALATION, "u", "race", "hash", {"title": "hi"})]
    )
    timers = runtime.storage.workflow_timers
    assert await WorkflowRunner(timers, clock).tick() == 1  # the push; the pause begins
    view = await runtime.storage.workflows.run(run.id)
    assert view is not None
    await _push_delivery(runtime, "d1", str(view.steps[0].notification_id), clock)
    clock.advance(60)

    [held] = await timers.claim_due(1, 60)
    if report == "before-the-step-is-taken":
        assert await runtime.storage.engagement.report("d1", Engagement.OPENED)
    state = await timers.state(held)
    if report == "after-it-was-taken":
        assert await runtime.storage.engagement.report("d1", Engagement.OPENED)
    decided = advance(
        held.id,
        ESCALATION,
        held.position,
        state.progress,
        state.facts,
        now=clock.now(),
        zone=state.zone,
        run_started_at=held.created_at,
    )
    sends = [step_notification(held, change) for change in decided.sends]
    assert await timers.apply(held, decided, sends)

    view = await runtime.storage.workflows.run(run.id)
    assert view is not None
    email = {s.step_id: s for s in view.steps}["email"]
    seen = report == "before-the-step-is-taken"
    assert email.status.value == ("skipped" if seen else "done")
    assert await workflow_notifications(runtime) == (1 if seen else 2)


async def _push_delivery(
    runtime: Runtime, delivery_id: str, notification_id: str, clock: FakeClock
) -> None:
    """The delivery the router would have made for the push step, sent."""
    async with runtime.storage.database.transaction() as db:
        await db.execute(
            t.deliveries.insert().values(
                id=delivery_id,
                notification_id=notification_id,
                user_id="u",
                channel="in_app",
                target="u",
                target_ref="u",
                state="sent",
                policy="at_least_once",
                priority="normal",
                category="default",
                payload={},
                created_at=clock.now(),
                updated_at=clock.now(),
            )
        )


MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("status", "due_in", "lease_in"),
    [
        ("running", -MINUTE, None),  # due
        ("running", -MINUTE, -MINUTE),  # due, its lease ran out
        ("running", -MINUTE, MINUTE),  # due, but another scheduler holds it
        ("running", MINUTE, None),  # not due yet
        ("running", None, None),  # waiting for an event, no timer
        ("completed", -MINUTE, None),  # done
    ],
    ids=["due", "lease-expired", "leased", "later", "no-timer", "completed"],
)
async def test_the_due_probe_answers_as_the_claim_would(
    runtime: Runtime,
    clock: FakeClock,
    status: str,
    due_in: timedelta | None,
    lease_in: timedelta | None,
) -> None:
    """The scheduler ticks only when the probe says yes: it must say yes exactly when a
    claim would take a run, and, looking ahead, when one would within that time."""
    [run_id] = await trigger_runs(runtime, 1)
    now = clock.now()
    async with runtime.storage.database.transaction() as db:
        await db.execute(
            t.workflow_runs.update()
            .where(t.workflow_runs.c.id == run_id)
            .values(
                status=status,
                due_at=None if due_in is None else now + due_in,
                lease_until=None if lease_in is None else now + lease_in,
            )
        )
    timers = runtime.storage.workflow_timers
    ahead = await timers.anything_due(within_seconds=2 * MINUTE.total_seconds())
    assert ahead is (status == "running" and due_in is not None)
    answer = await timers.anything_due()
    claimed = await timers.claim_due(10, 30)
    assert answer is bool(claimed)
    assert answer is (status == "running" and due_in == -MINUTE and lease_in != MINUTE)
