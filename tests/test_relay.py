"""The relay's backpressure on the in-process bus: a backlog waits in the outbox on disk,
not in the process's memory."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from herald.bus.interface import Lane, notifications_topic
from herald.relay import Relay
from herald.runtime import Runtime
from tests.fixtures.herald import eventually


@pytest.fixture
def backend() -> str:
    return "embedded"  # Kafka holds its backlog in the broker: nothing to hold back


async def test_the_relay_holds_back_while_the_in_process_bus_is_full(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={})
    items = [{"idempotency_key": f"k{n}", "user_id": "u", "title": "x"} for n in range(300)]
    await api.post("/v1/notifications/batch", json={"notifications": items})
    consumer = runtime.bus.consumer([notifications_topic(Lane.BULK)], "probe")
    stop = asyncio.Event()
    relay = Relay(runtime.store, runtime.bus, batch=50, max_in_memory=100, idle_poll_seconds=0.01)
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _outbox_is(runtime, 200))
        await asyncio.sleep(0.2)
        assert (runtime.bus.held_in_memory(), await runtime.store.outbox_size()) == (100, 200)
        taken = 0
        while taken < 300:  # consuming makes room, and the relay goes on
            messages = await consumer.poll(500, timeout=0.5)
            await consumer.commit(messages)
            taken += len(messages)
            assert runtime.bus.held_in_memory() <= 100
        assert await runtime.store.outbox_size() == 0
    finally:
        stop.set()
        await task
        await consumer.close()


async def _outbox_is(runtime: Runtime, size: int) -> bool:
    return await runtime.store.outbox_size() == size
