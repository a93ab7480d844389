"""The scheduler's side of workflows: due runs are taken in batches with a lease (SKIP
LOCKED on PostgreSQL, so several schedulers share them; an expired lease is taken again,
so a killed scheduler's runs are recovered), their facts read, and each advance applied in
one transaction guarded by the lease, the run's position and its status: a step is done
once, and its notification (a deterministic id per run and step) goes in with it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.domain.engagement import Engagement, engagement_column
from herald.domain.workflows import (
    Advance,
    EngagementCondition,
    EventCondition,
    RunFacts,
    RunStatus,
    StepChange,
    StepProgress,
    StepStatus,
    StepType,
    Workflow,
    parse_workflow,
)
from herald.storage import schema as t
from herald.storage.native import WORKFLOWS_DUE_SQL
from herald.storage.records import NewNotification
from herald.storage.repository import Repository
from herald.storage.statements import insert_notifications

R = t.workflow_runs.c
ST = t.workflow_run_steps.c


@dataclass(frozen=True, slots=True)
class DueRun:
    """A run this scheduler holds until `lease_until`, under `lease_token`."""

    id: str
    workflow: Workflow
    user_id: str
    input: dict[str, Any]
    position: int
    due_at: datetime
    created_at: datetime
    lease_token: str


@dataclass(frozen=True, slots=True)
class RunState:
    """What `advance` needs, read when the run is due."""

    progress: dict[str, StepProgress]
    facts: RunFacts
    zone: ZoneInfo


@dataclass(frozen=True, slots=True)
class Applied:
    """What a due run does, to be committed: its advance and the notifications of its
    sends."""

    run: DueRun
    advance: Advance
    notifications: tuple[NewNotification, ...] = ()


_STEP_UPDATE = (
    t.workflow_run_steps.update()
    .where(ST.run_id == sa.bindparam("step_run_id"), ST.step_id == sa.bindparam("step_key"))
    .values(
        status=sa.bindparam("new_status"),
        at=sa.bindparam("new_at"),
        detail=sa.bindparam("new_detail"),
        started_at=sa.func.coalesce(sa.bindparam("new_started_at"), ST.started_at),
        notification_id=sa.func.coalesce(sa.bindparam("new_notification_id"), ST.notification_id),
    )
)


def _moved(run: DueRun, advance: Advance) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "new_position": advance.position,
        "new_status": advance.status.value,
        "new_due_at": advance.due_at,
        "new_waiting_event": advance.waiting_event,
    }


def _step_change(run: DueRun, change: StepChange) -> dict[str, Any]:
    return {
        "step_run_id": run.id,
        "step_key": change.step_id,
        "new_status": change.status.value,
        "new_at": change.at,
        "new_detail": dict(change.detail),
        "new_started_at": change.started_at,
        "new_notification_id": change.notification_id,
    }


class WorkflowTimerRepository(Repository):
    def _due(self, now: datetime) -> list[sa.ColumnElement[bool]]:
        return [
            R.status == RunStatus.RUNNING.value,
            R.due_at <= now,
            sa.or_(R.lease_until.is_(None), R.lease_until < now),
        ]

    async def anything_due(self, within_seconds: float = 0.0) -> bool:
        """Would a tick find a due run now (or within the next `within_seconds`)? One read
        on the driver (WORKFLOWS_DUE_SQL, the conditions of `_due`). An outage answers yes:
        the tick then meets it as before."""
        return await self._probe_due(WORKFLOWS_DUE_SQL, within_seconds)

    async def claim_due(self, limit: int, lease_seconds: float) -> list[DueRun]:
        """Take up to `limit` due runs, oldest due first, for `lease_seconds`."""
        now = self.clock.now()
        token = uuid.uuid4().hex
        due = self.dialect.lock_skip(
            sa.select(R.id).where(*self._due(now)).order_by(R.due_at).limit(limit)
        )
        async with self.db.transaction() as db:
            rows = list(
                await db.execute(
                    t.workflow_runs.update()
                    .where(R.id.in_(due.scalar_subquery()), *self._due(now))
                    .values(lease_until=now + timedelta(seconds=lease_seconds), lease_token=token)
                    .returning(
                        R.id,
                        R.definition,
                        R.workflow_key,
                        R.user_id,
                        R.input,
                        R.position,
                        R.due_at,
                        R.created_at,
                    )
                )
            )
        return [
            DueRun(
                id=row.id,
                workflow=parse_workflow(row.workflow_key, row.definition),
                user_id=row.user_id,
                input=row.input,
                position=row.position,
                due_at=row.due_at,
                created_at=row.created_at,
                lease_token=token,
            )
            for row in rows
        ]

    async def states(self, runs: Sequence[DueRun]) -> dict[str, RunState]:
        """For each run (by id): its steps, what happened to the deliveries of the earlier
        sends its conditions ask about, the events its conditions and waits ask about, and
        the user's time zone. Read after the claim, in four statements for the batch."""
        if not runs:
            return {}
        async with self.db.reading() as db:
            progress = await self._progress(db, [run.id for run in runs])
            engagement = await self._engagement(db, runs, progress)
            events = await self._events(db, runs)
            zones = {
                row.id: row.timezone
                for row in await db.execute(
                    sa.select(t.users.c.id, t.users.c.timezone).where(
                        self.dialect.among(t.users.c.id, {run.user_id for run in runs})
                    )
                )
            }
        return {
            run.id: RunState(
                progress.get(run.id, {}),
                RunFacts(engagement.get(run.id, {}), events.get(run.id, {})),
                _zone(zones.get(run.user_id)),
            )
            for run in runs
        }

    async def state(self, run: DueRun) -> RunState:
        return (await self.states([run]))[run.id]

    async def _progress(self, db: Any, run_ids: list[str]) -> dict[str, dict[str, StepProgress]]:
        progress: dict[str, dict[str, StepProgress]] = {}
        rows = await db.execute(
            sa.select(ST.run_id, ST.step_id, ST.status, ST.started_at, ST.notification_id).where(
                self.dialect.among(ST.run_id, run_ids)
            )
        )
        for row in rows:
            progress.setdefault(row.run_id, {})[row.step_id] = StepProgress(
                StepStatus(row.status), row.started_at, row.notification_id
            )
        return progress

    async def _engagement(
        self, db: Any, runs: Sequence[DueRun], progress: dict[str, dict[str, StepProgress]]
    ) -> dict[str, dict[str, frozenset[str]]]:
        """run id -> send step -> what happened to its deliveries (ENGAGEMENT_FACTS)."""
        asked: dict[str, tuple[str, str]] = {}  # notification id -> (run id, step id)
        for run in runs:
            steps = {
                s.condition.step
                for s in run.workflow.steps
                if isinstance(s.condition, EngagementCondition)
            }
            for step_id, state in progress.get(run.id, {}).items():
                if step_id in steps and state.notification_id:
                    asked[state.notification_id] = (run.id, step_id)
        if not asked:
            return {}
        d = t.deliveries.c
        kinds = (Engagement.OPENED, Engagement.CLICKED, Engagement.READ)
        happened: dict[tuple[str, str], set[str]] = {key: set() for key in asked.values()}
        rows = await db.execute(
            sa.select(d.notification_id, d.state, *(d[engagement_column(k)] for k in kinds)).where(
                self.dialect.among(d.notification_id, list(asked))
            )
        )
        for row in rows:
            facts = happened[asked[row.notification_id]]
            facts.update(k.value for k, at in zip(kinds, row[2:], strict=True) if at is not None)
            if row.state == DeliveryState.DELIVERED.value:
                facts.add("delivered")
        engagement: dict[str, dict[str, frozenset[str]]] = {}
        for (run_id, step_id), facts in happened.items():
            engagement.setdefault(run_id, {})[step_id] = frozenset(facts)
        return engagement

    async def _events(
        self, db: Any, runs: Sequence[DueRun]
    ) -> dict[str, dict[str, list[datetime]]]:
        """run id -> event name -> when the user posted it since the run began."""
        asking = {run.id: _event_names(run.workflow) for run in runs}
        names = set().union(*asking.values())
        if not names:
            return {}
        listening = [run for run in runs if asking[run.id]]
        e = t.workflow_events.c
        rows = list(
            await db.execute(
                sa.select(e.user_id, e.name, e.created_at).where(
                    self.dialect.among(e.user_id, {run.user_id for run in listening}),
                    self.dialect.among(e.name, sorted(names)),
                    e.created_at >= min(run.created_at for run in listening),
                )
            )
        )
        events: dict[str, dict[str, list[datetime]]] = {}
        for run in listening:
            for row in rows:
                if (
                    row.user_id == run.user_id
                    and row.name in asking[run.id]
                    and row.created_at >= run.created_at
                ):
                    events.setdefault(run.id, {}).setdefault(row.name, []).append(row.created_at)
        return events

    async def apply(
        self, run: DueRun, advance: Advance, notifications: Sequence[NewNotification]
    ) -> bool:
        """Commit one run's advance (see apply_many); False when it was not applied."""
        return run.id in await self.apply_many([Applied(run, advance, tuple(notifications))])

    async def apply_many(self, batch: Sequence[Applied]) -> set[str]:
        """Commit the advances of a claimed batch with their notifications (and outbox
        rows), in one transaction. A run is applied only while this scheduler still holds
        it at the position it read and it is still running: its row is locked first, so a
        cancel either came before (the run is left out) or waits for the commit. Returns
        the ids of the runs applied."""
        if not batch:
            return set()
        now = self.clock.now()
        by_id = {item.run.id: item for item in batch}
        async with self.db.transaction() as db:
            # By primary key alone: with the status in the WHERE, SQLite read the runs
            # through the (status, due_at) index, every running run (100 ms at 100,000).
            held = await db.execute(
                sa.select(R.id, R.status, R.lease_token, R.position)
                .where(self.dialect.among(R.id, list(by_id)))
                .order_by(R.id)
                .with_for_update()
            )
            applied = [
                by_id[row.id]
                for row in held
                if row.status == RunStatus.RUNNING.value
                and row.lease_token == by_id[row.id].run.lease_token
                and row.position == by_id[row.id].run.position
            ]
            if not applied:
                return set()
            await db.execute(
                t.workflow_runs.update()
                .where(R.id == sa.bindparam("run_id"))
                .values(
                    position=sa.bindparam("new_position"),
                    status=sa.bindparam("new_status"),
                    due_at=sa.bindparam("new_due_at"),
                    waiting_event=sa.bindparam("new_waiting_event"),
                    lease_until=None,
                    lease_token=None,
                    updated_at=now,
                ),
                [_moved(item.run, item.advance) for item in applied],
            )
            changes = [_step_change(item.run, c) for item in applied for c in item.advance.changes]
            if changes:
                await db.execute(_STEP_UPDATE, changes)
            await insert_notifications(
                db, self.dialect, [n for item in applied for n in item.notifications], now
            )
            for item in applied:
                if item.advance.waiting_event is not None:
                    await self._due_if_event_came(db, item.run, item.advance.waiting_event, now)
        return {item.run.id for item in applied}

    async def _due_if_event_came(self, db: Any, run: DueRun, name: str, now: datetime) -> None:
        """An event posted while this run was being advanced into its wait (after its
        facts were read) found the run not yet waiting: it is due now instead."""
        e = t.workflow_events.c
        started = (
            sa.select(ST.started_at)
            .where(ST.run_id == run.id, ST.status == StepStatus.WAITING.value)
            .scalar_subquery()
        )
        came = (
            sa.select(e.id)
            .where(e.user_id == run.user_id, e.name == name, e.created_at >= started)
            .exists()
        )
        await db.execute(t.workflow_runs.update().where(R.id == run.id, came).values(due_at=now))

    async def pending(self) -> int:
        """Runs still running (what the bench and chaos wait on)."""
        async with self.db.reading() as db:
            count = await db.scalar(
                sa.select(sa.func.count())
                .select_from(t.workflow_runs)
                .where(R.status == RunStatus.RUNNING.value)
            )
        return int(count or 0)


def _event_names(workflow: Workflow) -> set[str]:
    names = {s.event for s in workflow.steps if s.type == StepType.WAIT and s.event}
    return names | {
        s.condition.event for s in workflow.steps if isinstance(s.condition, EventCondition)
    }


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
