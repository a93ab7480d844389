"""An idle fleet waits instead of polling (README: cheap when the load is light).

The relay makes no pass while nothing is written and wakes when something is, in one
process and (PostgreSQL) across processes; the scheduler asks one question while nothing is
due; a consume loop whose poll waits long still stops at once. Nothing here measures time:
the fallback polls are set to an hour, so whatever happens, a wake-up made it happen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from herald import roles
from herald.api.app import create_app
from herald.bus.interface import Message
from herald.clock import FakeClock
from herald.domain import DeliveryState
from herald.relay import Relay
from herald.runtime import Runtime
from herald.storage import DeliveryUpdate
from herald.storage.native import RelayBatch
from herald.wakeups import PgDoorbell, PgListener
from tests.fixtures.herald import eventually

HOUR = 3600.0
# LISTEN/NOTIFY: PostgreSQL only.
PRODUCTION_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("production", marks=[pytest.mark.production, pytest.mark.postgres])]
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(runtime: Runtime, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this process without a relay in it (as `herald api` runs)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(runtime)),
        base_url="http://herald.test",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as api:
        await api.put("/v1/users/u", json={})
        yield api


async def _accept(api: httpx.AsyncClient, key: str) -> str:
    answer = await api.post(
        "/v1/notifications",
        json={"user_id": "u", "title": "x", "channels": ["in_app"]},
        headers={"Idempotency-Key": key},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def _outbox_empty(runtime: Runtime) -> bool:
    return await runtime.storage.outbox.size() == 0


def _dsn(runtime: Runtime) -> str:
    return "postgresql://" + runtime.settings.effective_database_url.split("://", 1)[1]


async def _settle() -> None:
    """Let every ready task run (a loop that spins would run again and again)."""
    for _ in range(50):
        await asyncio.sleep(0)


class CommitDuringPass(Relay):
    """A relay whose first empty pass sees a notification committed (and the relay woken)
    right after it read the outbox: the race between a pass and a writer."""

    def __init__(self, *args: Any, api: httpx.AsyncClient, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api = api
        self.injecting = self.injected = False

    async def relay_pass(self) -> RelayBatch:
        batch = await super().relay_pass()
        if not batch.records and not self.injecting:
            self.injecting = True
            await _accept(self.api, "during-the-pass")
            self.injected = True
        return batch


async def test_a_row_committed_while_the_relay_reads_the_outbox_is_not_missed(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    relay = CommitDuringPass(
        runtime.storage.outbox,
        runtime.bus,
        idle_poll_seconds=HOUR,
        idle_poll_max_seconds=HOUR,
        api=client,
    )
    runtime.relay = relay  # the API in this process wakes it
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _relayed(relay))
    finally:
        stop.set()
        await task
    assert await runtime.storage.outbox.size() == 0


async def _relayed(relay: CommitDuringPass) -> bool:
    return relay.injected and await relay.outbox.size() == 0


@PRODUCTION_ONLY
async def test_an_idle_relay_makes_no_pass_until_another_process_writes_the_outbox(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """The API here has no relay in its process (runtime.relay is None), so it rings
    NOTIFY herald_outbox; the relay LISTENs on a connection of its own."""
    relay = Relay(
        runtime.storage.outbox,
        runtime.bus,
        idle_poll_seconds=HOUR,
        idle_poll_max_seconds=HOUR,
        wake_source=PgListener(_dsn(runtime)),
    )
    assert runtime.relay is None
    assert runtime.outbox_bell is not None
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _passes(relay, 1))
        await _settle()
        assert relay.passes == 1  # idle: no pass until woken, none of them by a timer
        await _accept(client, "from-another-process")
        await eventually(lambda: _outbox_empty(runtime))
    finally:
        stop.set()
        await task


async def _passes(relay: Relay, count: int) -> bool:
    return relay.passes >= count


@PRODUCTION_ONLY
async def test_rings_are_coalesced_and_each_is_followed_by_a_notify(runtime: Runtime) -> None:
    woken = asyncio.Event()
    listener = PgListener(_dsn(runtime), channel="herald_test_bell")
    bell = PgDoorbell(_dsn(runtime), channel="herald_test_bell")
    await listener.start(woken.set)
    try:
        assert woken.is_set()  # a (re)connect wakes: what was written meanwhile is looked at
        woken.clear()
        for _ in range(10):  # before the NOTIFY is sent: that one covers them all
            bell.ring()
        await asyncio.sleep(0)  # the sender starts: connecting, then NOTIFY
        for _ in range(100):  # while it is in flight
            bell.ring()
        await bell.drain()
        assert bell.sent == 2  # the first, and one after it for the 100 rung meanwhile
        await asyncio.wait_for(woken.wait(), 20)
    finally:
        await bell.close()
        await listener.close()


# To the very moment a deferral is due (due_at <= now), just past a lease (lease_until < now).
@pytest.mark.parametrize(("due", "after_s"), [("deferral", 10), ("lease", 31)])
async def test_the_scheduler_asks_one_question_while_nothing_is_due(
    runtime: Runtime,
    client: httpx.AsyncClient,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    due: str,
    after_s: float,
) -> None:
    notification = await _accept(client, "k")
    await runtime.router().route([notification])
    (delivery,) = await runtime.storage.notifications.deliveries_of(notification)
    (claimed,) = (await runtime.storage.deliveries.claim([delivery.id], 30)).claimed
    if due == "deferral":
        update = DeliveryUpdate(
            claimed.id,
            claimed.notification_id,
            DeliveryState.DEFERRED,
            due_at=clock.now() + timedelta(seconds=10),
        )
        await runtime.storage.deliveries.record_outcomes([update])
    passes: list[int] = []
    release_due = runtime.storage.scheduling.release_due

    async def counted(limit: int) -> Any:
        passes.append(limit)
        return await release_due(limit)

    monkeypatch.setattr(runtime.storage.scheduling, "release_due", counted)
    scheduler = runtime.scheduler()
    assert await scheduler.tick() == 0
    assert await scheduler.tick() == 0
    assert passes == []  # no pass: only its question was asked
    clock.advance(after_s)
    assert await scheduler.tick() == 1
    assert len(passes) == 1
    (current,) = await runtime.storage.deliveries.get([delivery.id])
    assert current.state == DeliveryState.QUEUED


async def test_a_consume_loop_waiting_on_a_long_poll_stops_at_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "POLL_SECONDS", HOUR)
    handled: list[Message] = []

    async def handle(messages: Any) -> None:
        handled.extend(messages)

    stop = asyncio.Event()
    loop = asyncio.create_task(
        roles.consume_loop(runtime.bus, ["herald.test.idle"], "idle-test", handle, stop, name="t")
    )
    await _settle()
    stop.set()
    # A guard against a hang, not a timing: the poll would otherwise wait an hour.
    await asyncio.wait_for(loop, 60)
    assert handled == []


async def test_the_scheduler_sleeps_its_idle_interval_until_something_falls_due_within_it(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its question looks one idle interval ahead: a deferral 10 s away lets it sleep 1 s at
    a time; once it is due within that second, the scheduler comes back every 0.25 s and
    releases it when it is due."""
    notification = await _accept(client, "k")
    await runtime.router().route([notification])
    (delivery,) = await runtime.storage.notifications.deliveries_of(notification)
    (claimed,) = (await runtime.storage.deliveries.claim([delivery.id], 30)).claimed
    due_at = clock.now() + timedelta(seconds=10)
    deferral = DeliveryUpdate(
        claimed.id, claimed.notification_id, DeliveryState.DEFERRED, due_at=due_at
    )
    await runtime.storage.deliveries.record_outcomes([deferral])
    scheduler = runtime.scheduler()
    assert (scheduler.interval, scheduler.idle_interval) == (0.25, 1.0)
    assert not await runtime.storage.scheduling.anything_due(within_seconds=9)
    assert await runtime.storage.scheduling.anything_due(within_seconds=10)

    waits: list[tuple[float, DeliveryState]] = []
    stop = asyncio.Event()

    async def record_wait(event: asyncio.Event, timeout: float) -> None:
        (current,) = await runtime.storage.deliveries.get([delivery.id])
        waits.append((timeout, current.state))
        clock.advance(4.75)  # the passes run 0, 4.75, 9.5 and 14.25 s after the deferral
        if len(waits) == 4:
            stop.set()

    monkeypatch.setattr("herald.scheduler.wait_for_event", record_wait)
    await scheduler.run(stop)
    deferred, queued = DeliveryState.DEFERRED, DeliveryState.QUEUED
    assert waits == [(1.0, deferred), (1.0, deferred), (0.25, deferred), (0.25, queued)]
