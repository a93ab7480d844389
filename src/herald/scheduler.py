"""The scheduler role: puts deliveries back on the bus when their time comes.

- deferred deliveries that are due (quiet hours ended, send_at reached, retry backoff over,
  the next frequency-cap window begun);
- digest windows that have ended: each becomes a notification of its own;
- deliveries whose worker died mid-send (lease expired): the channel policy decides
  between sending again (at_least_once) and `unknown` (at_most_once);
- a sweep for work whose bus message was lost (the in-process bus across a restart):
  notifications published but never routed (read from a position per lane, so a sweep
  reads what was published since the one before), deliveries queued but never claimed.
Several schedulers may run: every step is one atomic statement (SKIP LOCKED on PostgreSQL).

A pass first asks one cheap question (SchedulingRepository.anything_due), and runs its
statements only when something is due. The loop asks it for the next idle interval
(1 s by default): with nothing due that soon it sleeps that long, so an idle scheduler
costs two reads a second (deliveries, workflow runs); with something due soon it passes
every `interval` (0.25 s). What it already knows of runs on time; work another process
defers to less than the idle interval ahead may wait up to that interval.
Digests closed into notifications wake the relay (`on_outbox`). Due workflow runs are
fired by `workflows` (herald.workflows.runner), on its own repository.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from herald.bus.interface import Bus
from herald.bus.messages import delivery_record, notification_record
from herald.clock import Clock
from herald.metrics import METRICS
from herald.roles import wait_for_event
from herald.storage import Released
from herald.storage.scheduling import SchedulingRepository
from herald.wakeups import Wake
from herald.workflows.runner import WorkflowRunner

log = structlog.get_logger()


class Scheduler:
    def __init__(
        self,
        scheduling: SchedulingRepository,
        bus: Bus,
        clock: Clock,
        *,
        interval_seconds: float = 0.25,
        idle_interval_seconds: float | None = None,
        stale_after_seconds: float = 300.0,
        sweep_every_seconds: float = 30.0,
        maintain_every_seconds: float = 3600.0,
        batch: int = 1000,
        on_outbox: Wake | None = None,
        workflows: WorkflowRunner | None = None,
    ) -> None:
        self.scheduling = scheduling
        self.bus = bus
        self.clock = clock
        self.interval = interval_seconds
        self.idle_interval = idle_interval_seconds or 4 * interval_seconds
        self.stale_after = stale_after_seconds
        self.sweep_every = sweep_every_seconds
        self.maintain_every = maintain_every_seconds
        self.batch = batch
        self.on_outbox = on_outbox
        self.workflows = workflows

    async def tick(self) -> int:
        """One pass over due and expired work; returns how many deliveries it released."""
        if not await self.scheduling.anything_due():
            return 0
        released = 0
        while True:
            due = await self.scheduling.release_due(self.batch)
            await self._publish(due, "due")
            requeued, unknown = await self.scheduling.expire_leases(self.batch)
            await self._publish(requeued, "lease_expired")
            if unknown:
                log.warning(
                    "leases expired on at_most_once deliveries: marked unknown", count=unknown
                )
            digests = await self.scheduling.close_due_digests(self.batch)
            if digests:
                METRICS.digests_closed.inc(digests)
                if self.on_outbox is not None:
                    self.on_outbox()
            released += len(due) + len(requeued)
            if max(len(due), len(requeued), digests) < self.batch:
                return released

    async def sweep(self, older_than_seconds: float | None = None) -> int:
        """Republish work whose bus message may have been lost."""
        age = self.stale_after if older_than_seconds is None else older_than_seconds
        cutoff = self.clock.now() - timedelta(seconds=age)
        notifications = await self.scheduling.stale_notifications(cutoff, self.batch)
        if notifications:
            await self.bus.publish([notification_record(n, u, p) for n, u, p in notifications])
        queued = await self.scheduling.stale_queued(cutoff, self.batch)
        await self._publish(queued, "stale")
        if notifications or queued:
            log.info(
                "republished stale work", notifications=len(notifications), deliveries=len(queued)
            )
        return len(notifications) + len(queued)

    async def _publish(self, released: list[Released], reason: str) -> None:
        if released:
            await self.bus.publish(
                [delivery_record(r.delivery_id, r.user_id, r.channel, r.priority) for r in released]
            )
            METRICS.released.labels(reason).inc(len(released))

    async def run(self, stop: asyncio.Event) -> None:
        last_sweep = last_maintain = float("-inf")
        while not stop.is_set():
            soon = True  # after a failed pass, try again at the short interval
            try:
                soon = await self._pass_if_due_soon()
                now = self.clock.time()
                if now - last_sweep >= self.sweep_every:
                    last_sweep = now
                    await self.sweep()
                if now - last_maintain >= self.maintain_every:
                    last_maintain = now
                    await self.scheduling.maintain()
            except Exception:
                log.exception("scheduler pass failed; retrying")
            await wait_for_event(stop, self.interval if soon else self.idle_interval)

    async def _pass_if_due_soon(self) -> bool:
        """A pass over what is due, if anything is due within the idle interval; returns
        whether anything was (the loop then comes back after the short interval)."""
        deliveries = await self.scheduling.anything_due(self.idle_interval)
        if deliveries:
            await self.tick()
        runs = False
        if self.workflows is not None:
            runs = await self.workflows.due_within(self.idle_interval)
            if runs:
                await self.workflows.tick()
        return deliveries or runs
