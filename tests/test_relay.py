"""The relay's backpressure on the in-process bus (a backlog waits in the outbox on disk,
not in the process's memory), and the relay's and the scheduler's error branches: a failed
pass leaves the work where it was and the next pass does it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest

from herald.bus.interface import BusUnavailable, Lane, Record, notifications_topic
from herald.clock import FakeClock
from herald.domain import DeliveryState
from herald.relay import Relay
from herald.runtime import Runtime
from herald.scheduler import Scheduler
from herald.storage import DeliveryUpdate
from tests.fixtures.herald import ErrorLog, eventually


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
    relay = Relay(
        runtime.storage.outbox, runtime.bus, batch=50, max_in_memory=100, idle_poll_seconds=0.01
    )
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _outbox_is(runtime, 200))
        await asyncio.sleep(0.2)
        assert (runtime.bus.held_in_memory(), await runtime.storage.outbox.size()) == (100, 200)
        taken = 0
        while taken < 300:  # consuming makes room, and the relay goes on
            messages = await consumer.poll(500, timeout=0.5)
            await consumer.commit(messages)
            taken += len(messages)
            assert runtime.bus.held_in_memory() <= 100
        assert await runtime.storage.outbox.size() == 0
    finally:
        stop.set()
        await task
        await consumer.close()


async def _outbox_is(runtime: Runtime, size: int) -> bool:
    return await runtime.storage.outbox.size() == size


class FailingBus:
    """The runtime's bus, failing its first publishes with the given errors."""

    def __init__(self, bus: Any, *errors: Exception) -> None:
        self.bus = bus
        self.errors = list(errors)
        self.published: list[Record] = []
        self.batches: list[int] = []

    def held_in_memory(self) -> int:
        return int(self.bus.held_in_memory())

    async def publish(self, records: Sequence[Record]) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.published.extend(records)
        self.batches.append(len(records))
        await self.bus.publish(records)


async def _accept(api: httpx.AsyncClient, count: int) -> None:
    await api.put("/v1/users/u", json={})
    items = [{"idempotency_key": f"e{n}", "user_id": "u", "title": "x"} for n in range(count)]
    assert (await api.post("/v1/notifications/batch", json={"notifications": items})).is_success


class GatedClock(FakeClock):
    """A clock whose sleep lasts until the test opens the gate: the relay's linger, held
    open while the test makes more requests."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await self.gate.wait()
        self.advance(seconds)


async def test_wake_ups_within_the_linger_make_one_pass(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={})
    bus = FailingBus(runtime.bus)
    clock = GatedClock()
    # No fallback poll within the test: a poll that happened to run while a request
    # committed would take its row without the wake-up's linger.
    relay = Relay(
        runtime.storage.outbox,
        bus,  # type: ignore[arg-type]
        linger_seconds=0.003,
        idle_poll_seconds=3600,
        clock=clock,
    )
    runtime.relay = relay  # the API's accepts wake this relay
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _passes(relay, 1))  # the first pass found nothing
        for n in range(5):
            sent = await api.post("/v1/notifications", json={"user_id": "u", "title": f"{n}"})
            assert sent.status_code == 202
            await asyncio.wait_for(clock.sleeping.wait(), 20)  # the first wake-up lingers
        clock.gate.set()
        await eventually(lambda: _outbox_is(runtime, 0))
    finally:
        stop.set()
        await task
    assert bus.batches == [5]  # five requests, one pass


async def _passes(relay: Relay, count: int) -> bool:
    return relay.passes >= count


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        pytest.param(BusUnavailable("broker down"), None, id="bus-unavailable"),
        pytest.param(
            RuntimeError("serializer bug"),
            "relay pass failed; rows stay in the outbox",
            id="any-other-error",
            marks=pytest.mark.expect_errors,
        ),
    ],
)
async def test_a_failed_relay_pass_keeps_the_rows_and_the_next_pass_publishes_them(
    api: httpx.AsyncClient,
    runtime: Runtime,
    error_log: ErrorLog,
    error: Exception,
    logged: str | None,
) -> None:
    await _accept(api, 30)
    bus = FailingBus(runtime.bus, error)
    stop = asyncio.Event()
    relay = Relay(runtime.storage.outbox, bus, idle_poll_seconds=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _outbox_is(runtime, 0))
    finally:
        stop.set()
        await task
    assert bus.errors == []  # the failure happened
    assert len(bus.published) == 30  # then every row, once
    assert [e["event"] for e in error_log.events] == ([logged] if logged else [])


@pytest.mark.expect_errors
async def test_a_failed_scheduler_pass_is_logged_and_the_next_pass_releases(
    api: httpx.AsyncClient,
    runtime: Runtime,
    error_log: ErrorLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await api.put("/v1/users/u", json={})
    accepted = await api.post(
        "/v1/notifications", json={"user_id": "u", "title": "x", "channels": ["in_app"]}
    )
    notification = accepted.json()["id"]
    await runtime.router().route([notification])
    (delivery,) = await runtime.storage.notifications.deliveries_of(notification)
    (claimed,) = (await runtime.storage.deliveries.claim([delivery.id], 30)).claimed
    await runtime.storage.deliveries.record_outcomes(
        [
            DeliveryUpdate(
                claimed.id,
                claimed.notification_id,
                DeliveryState.DEFERRED,
                due_at=runtime.clock.now() - timedelta(seconds=1),
            )
        ]
    )
    release = runtime.storage.scheduling.release_due
    failures = [ConnectionResetError("database restarting")]

    async def flaky(limit: int) -> Any:
        if failures:
            raise failures.pop()
        return await release(limit)

    monkeypatch.setattr(runtime.storage.scheduling, "release_due", flaky)
    stop = asyncio.Event()
    scheduler = Scheduler(
        runtime.storage.scheduling, runtime.bus, runtime.clock, interval_seconds=0.01
    )
    task = asyncio.create_task(scheduler.run(stop))
    try:

        async def released() -> bool:
            (current,) = await runtime.storage.deliveries.get([delivery.id])
            return current.state != DeliveryState.DEFERRED

        await eventually(released)
    finally:
        stop.set()
        await task
    (current,) = await runtime.storage.deliveries.get([delivery.id])
    assert current.state == DeliveryState.QUEUED
    assert [e["event"] for e in error_log.events] == ["scheduler pass failed; retrying"]
