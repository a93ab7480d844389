"""The outbox relay: publishes what the API wrote to the outbox, the priority lane's rows
first, each lane in the order written.

Rows are taken under a lock (SKIP LOCKED on PostgreSQL, so many relays share the work),
published, and deleted in the same transaction. A crash after publishing and before the
delete publishes them again: a duplicate notification message, which routing absorbs.
"""

from __future__ import annotations

import asyncio

import structlog

from herald.bus.interface import Bus, BusUnavailable, Record
from herald.metrics import METRICS
from herald.roles import wait_for_event
from herald.storage.outbox import OutboxRepository

log = structlog.get_logger()


class Relay:
    def __init__(
        self,
        outbox: OutboxRepository,
        bus: Bus,
        *,
        batch: int = 1000,
        idle_poll_seconds: float = 0.05,
        # Five batches: enough to keep the consumers busy. The in-process bus's messages
        # are the embedded backend's only memory that follows the backlog; 20,000 of them
        # put serve at 186 MB at N = 10^5 against 160 MB at 10^4 (docs/benchmarks.md).
        max_in_memory: int = 5_000,
    ) -> None:
        self.outbox = outbox
        self.bus = bus
        self.batch = batch
        self.idle_poll = idle_poll_seconds
        self.max_in_memory = max_in_memory
        self.wakeup = asyncio.Event()

    async def relay_once(self) -> int:
        async with self.outbox.take(self.batch) as rows:
            if rows:
                await self.bus.publish(
                    [Record(topic, key, payload) for topic, key, payload in rows]
                )
        METRICS.relayed.inc(len(rows))
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.bus.held_in_memory() >= self.max_in_memory:
                # Backpressure (in-process bus): the backlog waits in the outbox, on disk.
                await wait_for_event(stop, self.idle_poll)
                continue
            try:
                if await self.relay_once():
                    continue
            except BusUnavailable as error:
                log.warning("bus unavailable; outbox rows wait", error=str(error))
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("relay pass failed; rows stay in the outbox")
                await asyncio.sleep(1.0)
            self.wakeup.clear()
            await wait_for_event(self.wakeup, self.idle_poll)
