"""The statements that make a send happen once, raced against themselves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta

import httpx
import orjson
import pytest

from herald.bus.interface import Message
from herald.clock import FakeClock
from herald.domain import DeliveryState as S
from herald.relay import Relay
from herald.runtime import Runtime
from herald.storage import DeliveryUpdate, Storage, open_storage
from tests.fixtures.herald import all_relayable


async def make_deliveries(api: httpx.AsyncClient, runtime: Runtime, count: int) -> list[str]:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    items = [
        {"idempotency_key": f"c{n}", "user_id": "u", "title": "x", "channels": ["in_app"]}
        for n in range(count)
    ]
    accepted = await api.post("/v1/notifications/batch", json={"notifications": items})
    ids = [item["id"] for item in accepted.json()["items"]]
    await runtime.router().route(ids)
    return [d.id for n in ids for d in await runtime.storage.notifications.deliveries_of(n)]


RACERS = 6


@pytest.fixture
async def racers(runtime: Runtime) -> AsyncIterator[list[Storage]]:
    """Stores of their own on the test's database, as separate processes would have: on
    SQLite separate engines (and connections) on the one WAL file, so the racing statements
    really overlap instead of queueing on the runtime's single pooled connection."""
    url = runtime.settings.effective_database_url
    stores = [open_storage(url, runtime.clock) for _ in range(RACERS)]
    try:
        yield stores
    finally:
        for storage in stores:
            await storage.database.close()


async def race(
    stores: Sequence[Storage], take: Callable[[Storage], Awaitable[list[str]]]
) -> Counter[str]:
    """Every store runs `take` at once, again and again until none of them gets anything;
    returns how many times each id was taken, in all."""
    taken: Counter[str] = Counter()
    start = asyncio.Event()

    async def one(storage: Storage) -> None:
        await start.wait()
        while got := await take(storage):
            taken.update(got)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(one(storage)) for storage in stores]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*tasks)
    return taken


async def test_racing_claims_give_each_delivery_to_one_worker(
    api: httpx.AsyncClient, runtime: Runtime, racers: list[Storage]
) -> None:
    ids = await make_deliveries(api, runtime, 200)

    async def claim(storage: Storage) -> list[str]:
        return [
            d.id for d in (await storage.deliveries.claim(ids[::-1][:150] + ids[:50], 30)).claimed
        ]

    winners = await race(racers, claim)
    assert set(winners) == set(ids)
    assert set(winners.values()) == {1}


async def test_racing_schedulers_release_each_due_delivery_once(
    api: httpx.AsyncClient, runtime: Runtime, racers: list[Storage]
) -> None:
    """release_due: deferred deliveries whose time has come, raced by six schedulers."""
    ids = await make_deliveries(api, runtime, 150)
    claimed = (await runtime.storage.deliveries.claim(ids, 30)).claimed
    past = runtime.clock.now() - timedelta(seconds=1)
    await runtime.storage.deliveries.record_outcomes(
        [DeliveryUpdate(d.id, d.notification_id, S.DEFERRED, due_at=past) for d in claimed]
    )

    async def release(storage: Storage) -> list[str]:
        return [r.delivery_id for r in await storage.scheduling.release_due(20)]

    released = await race(racers, release)
    assert set(released) == set(ids)
    assert set(released.values()) == {1}
    assert {d.state for d in await runtime.storage.deliveries.get(ids)} == {S.QUEUED}


async def test_racing_schedulers_expire_each_lease_once(
    api: httpx.AsyncClient, runtime: Runtime, racers: list[Storage]
) -> None:
    ids = await make_deliveries(api, runtime, 150)
    await runtime.storage.deliveries.claim(ids, lease_seconds=-1)  # leases already expired

    async def expire(storage: Storage) -> list[str]:
        requeued, _ = await storage.scheduling.expire_leases(20)
        return [r.delivery_id for r in requeued]

    released = await race(racers, expire)
    assert set(released) == set(ids)
    assert set(released.values()) == {1}


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, records: list[object]) -> None:
        await asyncio.sleep(0.01)  # while one relay publishes, the others must skip its rows
        self.published.extend(r.value for r in records)  # type: ignore[attr-defined]


async def test_racing_relays_publish_each_outbox_row_once(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    items = [{"idempotency_key": f"r{n}", "user_id": "u", "title": "x"} for n in range(300)]
    await api.post("/v1/notifications/batch", json={"notifications": items})
    bus = RecordingBus()
    relays = [Relay(runtime.storage.outbox, bus, batch=25) for _ in range(4)]  # type: ignore[arg-type]
    while await runtime.storage.outbox.size():
        await asyncio.gather(*(relay.relay_once() for relay in relays))
    published = Counter(orjson.loads(value)["notification_id"] for value in bus.published)
    assert len(published) == 300
    assert set(published.values()) == {1}


async def test_a_failed_publish_leaves_the_rows_in_the_outbox(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.post("/v1/notifications", json={"user_id": "u", "title": "x"})

    class DownBus:
        async def publish(self, records: list[Message]) -> None:
            raise ConnectionError("broker down")

    await all_relayable(runtime)  # else the pass may find nothing yet and publish nothing
    with pytest.raises(ConnectionError):
        await Relay(runtime.storage.outbox, DownBus()).relay_once()  # type: ignore[arg-type]
    assert await runtime.storage.outbox.size() == 1


async def test_old_delivery_events_are_dropped_after_the_retention(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """PostgreSQL drops whole day partitions; SQLite deletes the rows."""
    storage = runtime.storage
    real_clock = storage.database.clock
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    storage.database.clock = FakeClock(real_clock.now() - timedelta(days=5))
    await storage.scheduling.maintain()  # on PostgreSQL: the partitions around five days ago
    old = (await api.post("/v1/notifications", json={"user_id": "u", "title": "old"})).json()["id"]
    await runtime.router().route([old])
    storage.database.clock = real_clock
    new = (await api.post("/v1/notifications", json={"user_id": "u", "title": "new"})).json()["id"]
    await runtime.router().route([new])
    assert await storage.notifications.events_of(old)
    storage.database.retention_days = 2
    await storage.scheduling.maintain()
    assert await storage.notifications.events_of(old) == []
    assert await storage.notifications.events_of(new)
