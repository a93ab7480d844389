"""Fires due workflow runs: the part of the scheduler role that moves runs on.

Each pass takes due runs in batches under a lease (WorkflowTimerRepository.claim_due),
reads what their conditions ask at that moment, lets the domain decide
(herald.domain.workflows.advance) and applies the result in one guarded transaction. A
`send` step becomes an ordinary notification, with a deterministic id per (run, step),
through the outbox, so preferences, quiet hours, caps and digests apply to it unchanged.
An engagement report that lands before the run's facts are read is seen (the escalation
is skipped); one that lands after is too late (the step was already decided)."""

from __future__ import annotations

from typing import Any

import structlog

from herald.clock import Clock
from herald.domain import Notification, Priority
from herald.domain.workflows import StepChange, StepStatus, advance
from herald.metrics import METRICS
from herald.storage.records import NewNotification
from herald.storage.workflow_timers import Applied, DueRun, RunState, WorkflowTimerRepository
from herald.util import canonical_hash
from herald.wakeups import Wake

log = structlog.get_logger()


class WorkflowRunner:
    def __init__(
        self,
        timers: WorkflowTimerRepository,
        clock: Clock,
        *,
        lease_seconds: float = 60.0,
        batch: int = 200,
        on_outbox: Wake | None = None,
    ) -> None:
        self.timers = timers
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.on_outbox = on_outbox

    async def due_within(self, seconds: float) -> bool:
        """Whether a run falls due (or its lease runs out) within the next `seconds`."""
        return await self.timers.anything_due(seconds)

    async def tick(self) -> int:
        """Advance every due run; returns how many steps were done or skipped."""
        if not await self.timers.anything_due():
            return 0
        steps = sends = 0
        while True:
            runs = await self.timers.claim_due(self.batch, self.lease_seconds)
            states = await self.timers.states(runs)
            decided = [d for d in (self._decide(run, states[run.id]) for run in runs) if d]
            applied = await self.timers.apply_many(decided)
            for item in decided:
                if item.run.id in applied:
                    steps += self._count(item)
                    sends += len(item.notifications)
            if len(runs) < self.batch:
                break
        if sends and self.on_outbox is not None:
            self.on_outbox()
        return steps

    def _decide(self, run: DueRun, state: RunState) -> Applied | None:
        """What the run does now; None when it cannot be decided (its lease runs out and it
        is taken again: nothing was committed)."""
        now = self.clock.now()
        METRICS.workflow_timer_lag.observe(max(0.0, (now - run.due_at).total_seconds()))
        try:
            result = advance(
                run.id,
                run.workflow,
                run.position,
                state.progress,
                state.facts,
                now=now,
                zone=state.zone,
                run_started_at=run.created_at,
            )
            notifications = tuple(step_notification(run, change) for change in result.sends)
        except Exception:
            log.exception("workflow run could not advance", run_id=run.id)
            return None
        return Applied(run, result, notifications)

    @staticmethod
    def _count(item: Applied) -> int:
        """Steps done or skipped (a timer that starts is not a step done yet)."""
        types = {step.id: step.type.value for step in item.run.workflow.steps}
        done = 0
        for change in item.advance.changes:
            if change.status != StepStatus.WAITING:
                METRICS.workflow_steps.labels(types[change.step_id], change.status.value).inc()
                done += 1
        return done


def step_notification(run: DueRun, change: StepChange) -> NewNotification:
    """The notification a send step makes: the trigger's content on the step's channels
    (its template, else the trigger's title and body), carrying the run and step ids."""
    assert change.notification_id is not None
    step = next(s for s in run.workflow.steps if s.id == change.step_id)
    given = run.input
    content: dict[str, Any] = {
        "title": given.get("title"),
        "body": given.get("body"),
        "data": given.get("data") or {},
        "template": step.template or given.get("template"),
        "variables": given.get("variables") or {},
        "workflow_run_id": run.id,
        "workflow_step": step.id,
    }
    notification = Notification(
        id=change.notification_id,
        user_id=run.user_id,
        category=run.workflow.category,
        priority=Priority(given.get("priority") or Priority.NORMAL.value),
        title=content["title"],
        body=content["body"],
        data=content["data"],
        channels=step.channels if step.channels else None,
        template=content["template"],
        variables=content["variables"],
        workflow_run_id=run.id,
        workflow_step=step.id,
    )
    return NewNotification(
        notification, f"workflow:{run.id}:{step.id}", canonical_hash(content), content
    )
