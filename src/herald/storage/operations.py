"""What an operator watches: the backlog (outbox, deliveries waiting in each state and the
age of the oldest, workflow timers due), read at scrape time by the metrics endpoint and
by `herald status`; and the delivery log as it is written, for `herald tail`.
Each figure is one indexed lookup: the partial indexes ix_deliveries_unsent_updated and
ix_deliveries_deferred_due answer the counts and the oldest rows without a scan of the
finished deliveries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.domain.workflows import RunStatus
from herald.storage import schema as t
from herald.storage.outbox import read_backlog
from herald.storage.repository import Repository

S = DeliveryState
# The unsent states (UNSENT_STATES), in the order they are shown.
BACKLOG_STATES = (S.QUEUED, S.DEFERRED, S.SENDING)


@dataclass(frozen=True)
class StateBacklog:
    count: int
    oldest_age_seconds: float  # since the oldest of them entered the state; 0 when none


@dataclass(frozen=True)
class Backlog:
    outbox_depth: int
    outbox_oldest_age_seconds: float
    deliveries: dict[DeliveryState, StateBacklog] = field(default_factory=dict)
    # How far past its due time the most overdue deferred delivery is: the scheduler's lag.
    scheduler_lag_seconds: float = 0.0
    # Workflow runs whose timer (a delay, a wait's timeout, the next step) is due and not
    # taken by a scheduler, and how far past due the most overdue of them is.
    workflow_timers_due: int = 0
    workflow_timer_lag_seconds: float = 0.0


@dataclass(frozen=True)
class TailFilter:
    notification_id: str | None = None
    user_id: str | None = None
    channel: str | None = None
    state: str | None = None


@dataclass(frozen=True)
class LoggedEvent:
    """One entry of the delivery log with what its delivery says about it."""

    id: int
    at: datetime
    notification_id: str
    delivery_id: str
    user_id: str
    channel: str
    state: str
    provider: str | None
    detail: dict[str, Any]


class OperationsRepository(Repository):
    async def events_after(
        self, after_id: int | None, where: TailFilter, limit: int = 500
    ) -> list[LoggedEvent]:
        """Log entries after `after_id` in id order; with None, the last `limit` ones."""
        e, d = t.delivery_events, t.deliveries
        query = sa.select(
            e.c.id,
            e.c.created_at,
            e.c.notification_id,
            e.c.delivery_id,
            d.c.user_id,
            d.c.channel,
            e.c.state,
            e.c.provider,
            e.c.detail,
        ).join(d, d.c.id == e.c.delivery_id)
        conditions = {
            e.c.notification_id: where.notification_id,
            d.c.user_id: where.user_id,
            d.c.channel: where.channel,
            e.c.state: where.state,
        }
        for column, wanted in conditions.items():
            if wanted is not None:
                query = query.where(column == wanted)
        if after_id is None:
            query = query.order_by(e.c.id.desc()).limit(limit)
        else:
            query = query.where(e.c.id > after_id).order_by(e.c.id).limit(limit)
        async with self.db.reading() as db:
            rows = list(await db.execute(query))
        events = [LoggedEvent(*row) for row in rows]
        return sorted(events, key=lambda event: event.id)

    async def backlog(self) -> Backlog:
        now = self.clock.now()
        async with self.db.reading() as db:
            outbox_depth, outbox_oldest = await read_backlog(db)
            deliveries = {}
            for state in BACKLOG_STATES:
                row = (await db.execute(_backlog_of(state))).one()
                deliveries[state] = StateBacklog(int(row[0]), _age(now, row[1]))
            overdue = await db.scalar(
                sa.select(sa.func.min(t.deliveries.c.due_at)).where(
                    t.deliveries.c.state == S.DEFERRED.value, t.deliveries.c.due_at <= now
                )
            )
            timers = (await db.execute(_due_timers(now))).one()
        return Backlog(
            outbox_depth=outbox_depth,
            outbox_oldest_age_seconds=_age(now, outbox_oldest),
            deliveries=deliveries,
            scheduler_lag_seconds=_age(now, overdue),
            workflow_timers_due=int(timers[0]),
            workflow_timer_lag_seconds=_age(now, timers[1]),
        )


def _backlog_of(state: DeliveryState) -> sa.Select[int, datetime]:
    return sa.select(sa.func.count(), sa.func.min(t.deliveries.c.updated_at)).where(
        t.unsent_in(state)
    )


def _due_timers(now: datetime) -> sa.Select[int, datetime]:
    """The count and the earliest due time of the workflow timers a scheduler could take
    now: ix_workflow_runs_status_due answers it."""
    runs = t.workflow_runs.c
    return sa.select(sa.func.count(), sa.func.min(runs.due_at)).where(
        runs.status == RunStatus.RUNNING.value,
        runs.due_at <= now,
        sa.or_(runs.lease_until.is_(None), runs.lease_until < now),
    )


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0
