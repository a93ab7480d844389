"""Submitting notifications through `POST /v1/notifications/batch`: flat out from several
concurrent clients, or paced at a steady offered rate (for latency at a chosen load).

Items are made from their index when their batch is sent, so the harness holds no list of
N notifications."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from herald.bench.errors import BenchError
from herald.bench.report import Progress

ItemFactory = Callable[[int], dict[str, Any]]
MIN_TICK_S = 0.02  # paced mode: at most 50 batches per second


@dataclass
class Submitter:
    session: aiohttp.ClientSession
    batch_size: int
    clients: int
    progress: Progress | None = None
    sent: int = 0
    _in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        async with self.session.post(
            "/v1/notifications/batch", json={"notifications": batch}
        ) as answer:
            body = await answer.json()
            if answer.status != 200 or body.get("accepted") != len(batch):
                raise BenchError(f"batch refused: {answer.status} {str(body)[:500]}")
        self.sent += len(batch)
        if self.progress is not None:
            self.progress.update(self.sent)

    async def flat_out(self, make: ItemFactory, count: int) -> int:
        """Every item as fast as `clients` concurrent requests allow."""
        starts = iter(range(0, count, self.batch_size))

        async def client() -> None:
            for start in starts:  # one shared iterator: each batch goes out once
                end = min(count, start + self.batch_size)
                await self._post([make(i) for i in range(start, end)])

        await asyncio.gather(*(client() for _ in range(self.clients)))
        return self.sent

    async def paced(
        self, make: ItemFactory, count: int, rate: float, stop: asyncio.Event | None = None
    ) -> int:
        """Item i is due at start + i / rate; what is due goes out in batches (at most
        `clients` requests in flight). Ends after `count` items or when `stop` is set."""
        started = time.perf_counter()
        queued = 0
        slots = asyncio.Semaphore(self.clients)
        while queued < count and not (stop is not None and stop.is_set()):
            self._reap()
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            while queued < due:
                end = min(due, queued + self.batch_size)
                await slots.acquire()
                self._spawn([make(i) for i in range(queued, end)], slots)
                queued = end
            wait = started + queued / rate - time.perf_counter()
            await asyncio.sleep(max(MIN_TICK_S, wait))
        await asyncio.gather(*self._in_flight)
        self._in_flight.clear()
        return self.sent

    def _spawn(self, batch: list[dict[str, Any]], slots: asyncio.Semaphore) -> None:
        task = asyncio.create_task(self._post(batch))
        task.add_done_callback(lambda _t: slots.release())
        self._in_flight.add(task)

    def _reap(self) -> None:
        """Drop finished requests; re-raise the first failure."""
        for task in [t for t in self._in_flight if t.done()]:
            self._in_flight.discard(task)
            task.result()
