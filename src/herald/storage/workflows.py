"""Workflows as the API uses them: definitions, triggers (idempotent, like notifications),
runs read back with their steps, cancellation by key, and the events runs wait on.

The scheduler's side (due runs taken with a lease, each step applied once) is
workflow_timers.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain.workflows import (
    RunStatus,
    StepStatus,
    Workflow,
    parse_workflow,
    workflow_to_json,
)
from herald.storage import schema as t
from herald.storage.broadcasts import CANCELLED
from herald.storage.records import Page
from herald.storage.repository import Repository
from herald.storage.rows import page, paged
from herald.util import chunks

R = t.workflow_runs.c
ST = t.workflow_run_steps.c
# In a broadcast's template: the broadcast is a workflow trigger for a topic, whose pages
# are runs (herald.router.fanout).
TRIGGER_TEMPLATE = "workflow_trigger"


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    workflow: Workflow
    user_id: str
    idempotency_key: str
    request_hash: str
    input: dict[str, Any]
    api_key_id: str = ""
    cancellation_key: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerResult:
    """`created` is False for a replay with the same body; `conflict` for another body."""

    id: str
    user_id: str
    created: bool
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class RunStep:
    step_id: str
    type: str
    status: StepStatus
    notification_id: str | None
    at: datetime | None
    started_at: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunView:
    id: str
    workflow_key: str
    user_id: str
    status: RunStatus
    cancellation_key: str | None
    due_at: datetime | None
    waiting_event: str | None
    created_at: datetime
    steps: list[RunStep]


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: str
    workflow_key: str
    user_id: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Cancelled:
    runs: int
    notification_ids: list[str]  # the runs' sends already made (the caller cancels them)


class WorkflowRepository(Repository):
    # -- definitions --------------------------------------------------------------------
    async def put(self, workflow: Workflow) -> bool:
        """Create or replace; True when it is new. Running runs keep the definition they
        were triggered with."""
        w = t.workflows
        values = {"definition": workflow_to_json(workflow), "updated_at": self.clock.now()}
        async with self.db.transaction() as db:
            existed = await db.scalar(sa.select(w.c.key).where(w.c.key == workflow.key))
            await db.execute(
                self.dialect.insert(w)
                .values(key=workflow.key, **values)
                .on_conflict_do_update(index_elements=["key"], set_=values)
            )
        return existed is None

    async def get(self, key: str) -> Workflow | None:
        async with self.db.reading() as db:
            raw = await db.scalar(
                sa.select(t.workflows.c.definition).where(t.workflows.c.key == key)
            )
        return parse_workflow(key, raw) if raw is not None else None

    async def delete(self, key: str) -> bool:
        async with self.db.transaction() as db:
            result = await db.execute(t.workflows.delete().where(t.workflows.c.key == key))
        return bool(result.rowcount)

    async def all(self) -> list[Workflow]:
        async with self.db.reading() as db:
            rows = await db.execute(sa.select(t.workflows).order_by(t.workflows.c.key))
            return [parse_workflow(row.key, row.definition) for row in rows]

    # -- runs ---------------------------------------------------------------------------
    async def trigger(self, runs: Sequence[NewRun]) -> list[TriggerResult]:
        """Create runs, due at once, with their steps pending, in one transaction.
        Idempotent per (API key, Idempotency-Key, user): ON CONFLICT DO NOTHING, then the
        runs that were there already are compared by request hash."""
        if not runs:
            return []
        first = runs[0]
        async with self.db.transaction() as db:
            created = await self._insert_runs(db, runs)
            stored = {
                (row.idempotency_key, row.user_id): (row.id, row.request_hash)
                for row in await db.execute(
                    sa.select(R.id, R.idempotency_key, R.user_id, R.request_hash).where(
                        R.api_key_id == first.api_key_id,
                        self.dialect.among(R.idempotency_key, {r.idempotency_key for r in runs}),
                        self.dialect.among(R.user_id, [run.user_id for run in runs]),
                    )
                )
            }
        results = []
        for run in runs:
            run_id, stored_hash = stored[(run.idempotency_key, run.user_id)]
            results.append(
                TriggerResult(
                    run_id, run.user_id, run_id in created, stored_hash != run.request_hash
                )
            )
        return results

    async def accept_trigger_page(self, trigger_id: str, runs: Sequence[NewRun]) -> bool:
        """One page of a topic trigger's runs (see herald.router.fanout), unless the trigger
        is cancelled, judged under its broadcast row's lock as a broadcast's page is. A page
        written again (its message redelivered) adds nobody: the runs' ids and idempotency
        keys are deterministic. False when it wrote nothing."""
        b = t.broadcasts.c
        async with self.db.transaction() as db:
            state = await db.scalar(sa.select(b.state).where(b.id == trigger_id).with_for_update())
            if state is None or state == CANCELLED:
                return False
            await self._insert_runs(db, runs)
        return True

    async def _insert_runs(self, db: AsyncConnection, runs: Sequence[NewRun]) -> set[str]:
        """The runs that were not there yet, with their steps pending; their ids."""
        now = self.clock.now()
        created: set[str] = set()
        for chunk in chunks(runs, self.db.batch_rows):
            inserted = await db.execute(
                self.dialect.insert(t.workflow_runs)
                .on_conflict_do_nothing(index_elements=["api_key_id", "idempotency_key", "user_id"])
                .returning(R.id),
                [_run_row(run, now) for run in chunk],
            )
            created |= {row.id for row in inserted}
        steps = [
            _step_row(run.id, position, step.id, step.type.value)
            for run in runs
            if run.id in created
            for position, step in enumerate(run.workflow.steps)
        ]
        for rows in chunks(steps, self.db.batch_rows * 4):
            await db.execute(t.workflow_run_steps.insert(), rows)
        return created

    async def run(self, run_id: str) -> RunView | None:
        """The run and its steps, in one statement (one snapshot: a step never shows
        ahead of its run)."""
        async with self.db.reading() as db:
            rows = list(
                await db.execute(
                    sa.select(
                        R.id,
                        R.workflow_key,
                        R.user_id,
                        R.status,
                        R.cancellation_key,
                        R.due_at,
                        R.waiting_event,
                        R.created_at,
                        ST.step_id,
                        ST.type,
                        ST.status.label("step_status"),
                        ST.notification_id,
                        ST.at,
                        ST.started_at,
                        ST.detail,
                    )
                    .join(t.workflow_run_steps, ST.run_id == R.id)
                    .where(R.id == run_id)
                    .order_by(ST.position)
                )
            )
        if not rows:
            return None
        row = rows[0]
        return RunView(
            id=row.id,
            workflow_key=row.workflow_key,
            user_id=row.user_id,
            status=RunStatus(row.status),
            cancellation_key=row.cancellation_key,
            due_at=row.due_at,
            waiting_event=row.waiting_event,
            created_at=row.created_at,
            steps=[
                RunStep(
                    step_id=r.step_id,
                    type=r.type,
                    status=StepStatus(r.step_status),
                    notification_id=r.notification_id,
                    at=r.at,
                    started_at=r.started_at,
                    detail=r.detail or {},
                )
                for r in rows
            ],
        )

    async def runs(self, limit: int, cursor: str | None) -> Page[RunSummary]:
        """Recent runs, newest first, keyset-paged on (created_at, id)."""
        query = sa.select(R.id, R.workflow_key, R.user_id, R.status, R.created_at, R.updated_at)
        rows = paged(await page(self.db, query, t.workflow_runs, limit, cursor), limit)
        return Page(
            [
                RunSummary(
                    r.id, r.workflow_key, r.user_id, RunStatus(r.status), r.created_at, r.updated_at
                )
                for r in rows.items
            ],
            rows.next_cursor,
        )

    async def cancel(self, cancellation_key: str, user_id: str | None = None) -> Cancelled:
        """Stop the running runs with this key (of one user, or all): none of their steps
        happens from now on. A step being applied at this moment either committed first
        (its notification is among those returned) or finds the run cancelled and rolls
        back (workflow_timers.apply guards on the status)."""
        which = [R.cancellation_key == cancellation_key]
        if user_id is not None:
            which.append(R.user_id == user_id)
        # Without a user, a topic or list trigger still fanning out stops too.
        return await self._cancel(which, triggers_of=cancellation_key if user_id is None else None)

    async def cancel_run(self, run_id: str) -> Cancelled:
        """Stop one run (the console's cancel button), as `cancel` does."""
        return await self._cancel([R.id == run_id])

    async def _cancel(
        self, which: list[sa.ColumnElement[bool]], triggers_of: str | None = None
    ) -> Cancelled:
        which = [*which, R.status == RunStatus.RUNNING.value]
        now = self.clock.now()
        async with self.db.transaction() as db:
            if triggers_of is not None:
                # First, so a page being written commits before the runs are read below.
                await self._stop_topic_triggers(db, triggers_of)
            ids = [
                row.id
                for row in await db.execute(
                    t.workflow_runs.update()
                    .where(*which)
                    .values(
                        status=RunStatus.CANCELLED.value,
                        due_at=None,
                        waiting_event=None,
                        lease_until=None,
                        lease_token=None,
                        updated_at=now,
                    )
                    .returning(R.id)
                )
            ]
            if not ids:
                return Cancelled(0, [])
            open_steps = [StepStatus.PENDING.value, StepStatus.WAITING.value]
            await db.execute(
                t.workflow_run_steps.update()
                .where(self.dialect.among(ST.run_id, ids), ST.status.in_(open_steps))
                .values(status=StepStatus.CANCELLED.value, at=now)
            )
            sent = await db.execute(
                sa.select(ST.notification_id).where(
                    self.dialect.among(ST.run_id, ids), ST.notification_id.is_not(None)
                )
            )
            return Cancelled(len(ids), [row.notification_id for row in sent])

    async def _stop_topic_triggers(self, db: AsyncConnection, cancellation_key: str) -> None:
        """Fanned-out triggers (a topic or a list) with this key make no more runs: their
        broadcast rows are cancelled (under the row lock each page takes). Few broadcasts
        are fanning out at any time, so they are read and matched here."""
        b = t.broadcasts.c
        fanning = await db.execute(sa.select(b.id, b.template).where(b.state == "fanning_out"))
        ids = [
            row.id
            for row in fanning
            if (row.template or {}).get(TRIGGER_TEMPLATE, {}).get("cancellation_key")
            == cancellation_key
        ]
        if ids:
            await db.execute(
                t.broadcasts.update()
                .where(self.dialect.among(b.id, ids), b.state != CANCELLED)
                .values(state=CANCELLED, updated_at=self.clock.now())
            )

    async def post_event(self, user_id: str, name: str, data: dict[str, Any]) -> int:
        """Record the event and make the user's runs waiting for it due now; returns how
        many were woken. (A run that starts to wait on it concurrently sees the event when
        it commits its wait: workflow_timers.apply.)"""
        now = self.clock.now()
        async with self.db.transaction() as db:
            await db.execute(
                t.workflow_events.insert().values(
                    user_id=user_id, name=name, data=data, created_at=now
                )
            )
            woken = await db.execute(
                t.workflow_runs.update()
                .where(
                    R.user_id == user_id,
                    R.waiting_event == name,
                    R.status == RunStatus.RUNNING.value,
                )
                .values(due_at=now)
            )
        return int(woken.rowcount)


def _run_row(run: NewRun, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow_key": run.workflow.key,
        "definition": workflow_to_json(run.workflow),
        "user_id": run.user_id,
        "api_key_id": run.api_key_id,
        "idempotency_key": run.idempotency_key,
        "request_hash": run.request_hash,
        "cancellation_key": run.cancellation_key,
        "input": run.input,
        "status": RunStatus.RUNNING.value,
        "position": 0,
        "due_at": now,
        "waiting_event": None,
        "lease_until": None,
        "lease_token": None,
        "created_at": now,
        "updated_at": now,
    }


def _step_row(run_id: str, position: int, step_id: str, kind: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step_id": step_id,
        "position": position,
        "type": kind,
        "status": StepStatus.PENDING.value,
        "notification_id": None,
        "started_at": None,
        "at": None,
        "detail": {},
    }
