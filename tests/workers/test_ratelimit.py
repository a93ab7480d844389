"""The per-provider token bucket: bulk waits its turn, urgent sends never queue behind it."""

from __future__ import annotations

import asyncio

from herald.clock import FakeClock
from herald.workers.ratelimit import TokenBucket


async def test_bulk_waits_for_tokens_and_urgent_goes_first_into_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock)  # 10 a second, burst 10
    start = clock.time()
    await bucket.acquire(10)
    assert clock.time() == start  # the burst is there at once
    await bucket.acquire(5)
    assert clock.time() - start == 0.5  # then 10 a second

    await bucket.acquire(3, urgent=True)
    assert clock.time() - start == 0.5  # urgent did not wait ...
    await bucket.acquire(2)
    assert clock.time() - start == 1.0  # ... the bulk after it paid for it


async def test_an_urgent_send_passes_a_bulk_send_that_is_waiting() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, clock)
    await bucket.acquire(1)
    order: list[str] = []

    async def send(name: str, urgent: bool) -> None:
        await bucket.acquire(1, urgent=urgent)
        order.append(name)

    bulk = asyncio.create_task(send("bulk", urgent=False))
    await asyncio.sleep(0)
    await send("urgent", urgent=True)
    await bulk
    assert order == ["urgent", "bulk"]
