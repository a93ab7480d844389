"""The outbox relay: publishes what the API wrote to the outbox, the priority lane's rows
first, each lane in the order written.

What it publishes is the notification rows themselves, read after each lane's position
(herald.storage.outbox says how), and the few outbox-table records that are not a new
notification. A lane is taken by one relay at a time; the position moves in the pass's
transaction after the publish, so a crash in between publishes the same rows again: a
duplicate notification message, which routing absorbs.

On PostgreSQL a committed row can be held back for a moment: the relay reads only below the
oldest open transaction, which may be another one's, and its wake-up may have been spent
on the pass that could not see it. The pass says when it saw such rows (in the same
statement: herald.storage.native, RELAY_TAKE_POSTGRES), and the relay, with no wake-up
pending, comes back within milliseconds instead of at the fallback pass.

A pass that took less than a batch took every row it could see, so the relay does not pass
again at once: rows committed since have rung the wake-up, and rows held back are what the
pass said it saw. At a light load that saves an empty pass (a transaction of four round
trips) per batch.

An idle relay does not poll: it waits for its `wakeup` event, set by the writers of outbox
rows in this process and by `wake_source` (LISTEN, herald.wakeups) for those elsewhere.
A pass that finds nothing doubles the wait of the fallback pass (from `idle_poll_seconds`
up to `idle_poll_max_seconds`), which only matters for a wake-up that was lost.

A wake-up from idle lingers `linger_seconds` (HERALD_RELAY_LINGER_MS) before the pass: at
a light load every accepted request rings, and without the linger each request cost a pass
of its own. Within the budget several requests' rows go in one pass. A wake-up that rang
during the pass does not linger: its rows are already waiting.
"""

from __future__ import annotations

import asyncio

import structlog

from herald.bus.interface import Bus, BusUnavailable, Record
from herald.clock import SYSTEM_CLOCK, Clock
from herald.metrics import METRICS
from herald.roles import wait_for_event
from herald.storage.native import RelayBatch
from herald.storage.outbox import OutboxRepository
from herald.wakeups import WakeSource

log = structlog.get_logger()

# How soon a relay comes back for rows held back by an open transaction (doubling while
# they stay held back: a long transaction elsewhere must not make it spin).
HELD_BACK_FIRST_WAIT_SECONDS = 0.002
HELD_BACK_MAX_WAIT_SECONDS = 0.05


class Relay:
    def __init__(
        self,
        outbox: OutboxRepository,
        bus: Bus,
        *,
        batch: int = 1000,
        idle_poll_seconds: float = 0.05,
        idle_poll_max_seconds: float = 2.0,
        wake_source: WakeSource | None = None,
        # Five batches: enough to keep the consumers busy. The in-process bus's messages
        # are the embedded backend's only memory that follows the backlog (docs/benchmarks.md,
        # "Figures behind code choices").
        max_in_memory: int = 5_000,
        linger_seconds: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.outbox = outbox
        self.bus = bus
        self.batch = batch
        self.idle_poll = idle_poll_seconds
        self.idle_poll_max = max(idle_poll_seconds, idle_poll_max_seconds)
        self.wake_source = wake_source
        self.passes = 0  # outbox passes made (diagnostics, tests)
        self.max_in_memory = max_in_memory
        self.wakeup = asyncio.Event()
        self.linger = linger_seconds
        self.clock = clock

    async def relay_once(self) -> int:
        """One pass: publish what waits and move the positions. How many records went."""
        return len((await self.relay_pass()).records)

    async def relay_pass(self) -> RelayBatch:
        """One pass: what it published, and whether it saw rows it could not take yet."""
        self.passes += 1
        async with self.outbox.take(self.batch) as batch:
            if batch.records:
                await self.bus.publish(
                    [Record(topic, key, payload) for topic, key, payload in batch.records]
                )
        METRICS.relayed.inc(len(batch.records))
        return batch

    async def run(self, stop: asyncio.Event) -> None:
        if self.wake_source is not None:
            await self.wake_source.start(self.wakeup.set)
        # A stop ends the wait for work too.
        stopping = asyncio.create_task(_set_when(stop, self.wakeup))
        try:
            await self._run(stop)
        finally:
            stopping.cancel()
            if self.wake_source is not None:
                await self.wake_source.close()

    async def _run(self, stop: asyncio.Event) -> None:
        fallback = self.idle_poll
        held_back_wait = HELD_BACK_FIRST_WAIT_SECONDS
        while not stop.is_set():
            if self.bus.held_in_memory() >= self.max_in_memory:
                # Backpressure (in-process bus): the backlog waits in the outbox, on disk.
                await wait_for_event(stop, self.idle_poll)
                continue
            # Cleared before the pass: a row committed after the pass read the outbox sets
            # it again, so the wait below returns at once instead of missing that row.
            self.wakeup.clear()
            try:
                done = await self.relay_pass()
                if done.records:
                    fallback = self.idle_poll
                if len(done.records) >= self.batch:
                    continue  # a lane may have more: take it at once
            except BusUnavailable as error:
                log.warning("bus unavailable; outbox rows wait", error=str(error))
                await wait_for_event(stop, 1.0)
                continue
            except Exception:
                log.exception("relay pass failed; rows stay in the outbox")
                await wait_for_event(stop, 1.0)
                continue
            if done.held_back and not self.wakeup.is_set():
                # Their wake-up was spent on this pass: come back soon, not at the fallback.
                await wait_for_event(self.wakeup, held_back_wait)
                held_back_wait = min(held_back_wait * 2, HELD_BACK_MAX_WAIT_SECONDS)
                continue
            held_back_wait = HELD_BACK_FIRST_WAIT_SECONDS
            from_idle = not self.wakeup.is_set()  # else rows came during the pass: no linger
            if await wait_for_event(self.wakeup, fallback) and from_idle and self.linger > 0:
                await self.clock.sleep(self.linger)
            fallback = min(fallback * 2, self.idle_poll_max)


async def _set_when(stop: asyncio.Event, event: asyncio.Event) -> None:
    await stop.wait()
    event.set()
