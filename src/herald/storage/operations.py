"""What an operator watches: the backlog (outbox, deliveries waiting in each state and the
age of the oldest, workflow timers due), read at scrape time by the metrics endpoint and
by `herald status`; and the delivery log as it is written, for `herald tail`.
Each figure is one indexed lookup: the partial indexes ix_deliveries_unsent_updated and
ix_deliveries_deferred_due answer the counts and the oldest rows without a scan of the
finished deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from herald.domain import DeliveryState
from herald.domain.workflows import RunStatus
from herald.storage import schema as t
from herald.storage.outbox import read_backlog
from herald.storage.repository import Repository
from herald.storage.rows import SENT_COLUMNS, sent_event

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
    """One entry of the delivery log with what its delivery says about it. `id` is the
    written event's; a send its delivery row tells (rows.sent_event) has none."""

    id: int | None
    at: datetime
    notification_id: str
    delivery_id: str
    user_id: str
    channel: str
    state: str
    provider: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class LogPosition:
    """How far `herald tail` has read the log's two sources: the written events (by id) and
    the sends the delivery rows tell (by `sent_at`, then delivery id)."""

    event_id: int = 0
    sent_at: datetime | None = None
    sent_id: str = ""

    def after(self, entries: Sequence[LoggedEvent]) -> LogPosition:
        position = self
        for entry in entries:
            if entry.id is not None:
                position = replace(position, event_id=max(position.event_id, entry.id))
            elif position.sent_at is None or (entry.at, entry.delivery_id) > (
                position.sent_at,
                position.sent_id,
            ):
                position = replace(position, sent_at=entry.at, sent_id=entry.delivery_id)
        return position


class OperationsRepository(Repository):
    async def log_after(
        self, position: LogPosition | None, where: TailFilter, limit: int = 500
    ) -> tuple[list[LoggedEvent], LogPosition]:
        """Log entries after `position` in time order, at most `limit`, and the position
        after them; with None, the last `limit` entries and the position after the newest.
        The entries come from the written events and from the sends the rows tell: when
        either source gives `limit` entries, those after its last one wait for the next
        call, so that nothing is passed over."""
        async with self.db.reading() as db:
            events = [
                LoggedEvent(*row) for row in await db.execute(_events(position, where, limit))
            ]
            sends = (
                [_told_send(row) for row in await db.execute(_sends(position, where, limit))]
                if where.state in (None, S.SENT.value)
                else []
            )
        # At one instant a send comes before the written events (a webhook's word on it).
        merged = sorted(
            events + sends, key=lambda e: (e.at, e.id is not None, e.id or 0, e.delivery_id)
        )
        if position is None:
            merged = merged[-limit:]
            return merged, LogPosition().after(events).after(sends)
        full = [batch[-1].at for batch in (events, sends) if len(batch) >= limit]
        if full:
            merged = [entry for entry in merged if entry.at <= min(full)]
        return merged, position.after(merged)

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


def _events(position: LogPosition | None, where: TailFilter, limit: int) -> sa.Select[Any]:
    e, d = t.delivery_events, t.deliveries
    query: sa.Select[Any] = sa.select(
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
    query = _filtered(query, where, e.c.notification_id, e.c.state)
    if position is None:
        return query.order_by(e.c.id.desc()).limit(limit)
    return query.where(e.c.id > position.event_id).order_by(e.c.id).limit(limit)


def _sends(position: LogPosition | None, where: TailFilter, limit: int) -> sa.Select[Any]:
    """Through ix_deliveries_sent (its predicate repeated, for SQLite)."""
    d = t.deliveries.c
    query = sa.select(d.user_id, d.channel, *(d[c] for c in SENT_COLUMNS)).where(
        d.sent_at.is_not(None)
    )
    query = _filtered(query, where, d.notification_id, None)
    if position is None:
        return query.order_by(d.sent_at.desc(), d.id.desc()).limit(limit)
    if position.sent_at is not None:
        at, last = position.sent_at, position.sent_id
        # (sent_at, id) after the position's, with the index's range spelled out.
        query = query.where(d.sent_at >= at, sa.or_(d.sent_at > at, d.id > last))
    return query.order_by(d.sent_at, d.id).limit(limit)


def _filtered(
    query: sa.Select[Any],
    where: TailFilter,
    notification_id: sa.ColumnElement[Any],
    state: sa.ColumnElement[Any] | None,
) -> sa.Select[Any]:
    d = t.deliveries.c
    conditions = {
        notification_id: where.notification_id,
        d.user_id: where.user_id,
        d.channel: where.channel,
    }
    if state is not None:
        conditions[state] = where.state
    for column, wanted in conditions.items():
        if wanted is not None:
            query = query.where(column == wanted)
    return query


def _told_send(row: Any) -> LoggedEvent:
    sent = sent_event(row)
    return LoggedEvent(
        None,
        sent.at,
        sent.notification_id,
        sent.delivery_id,
        row.user_id,
        row.channel,
        sent.state.value,
        sent.provider,
        sent.detail,
    )
