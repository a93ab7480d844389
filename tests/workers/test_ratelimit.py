"""The per-provider token bucket: bulk waits its turn, urgent sends never queue behind it."""

from __future__ import annotations

import asyncio

import pytest

from herald.clock import SYSTEM_CLOCK, FakeClock
from herald.workers.ratelimit import TokenBucket

pytestmark = pytest.mark.timeout(15)  # a bucket that never grants must fail, not hang


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
    bucket = TokenBucket(0.5, SYSTEM_CLOCK, burst=1)  # a token every 2 s
    await bucket.acquire(1)
    bulk = asyncio.create_task(bucket.acquire(1))  # waits about 2 s, holding the queue
    await asyncio.sleep(0.05)
    assert not bulk.done()
    await asyncio.wait_for(bucket.acquire(1, urgent=True), timeout=1)  # does not queue
    assert not bulk.done()
    await asyncio.wait_for(bulk, timeout=10)
