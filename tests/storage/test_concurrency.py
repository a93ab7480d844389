"""The statements that make a send happen once, raced against themselves."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import httpx
import orjson
import pytest

from herald.bus.interface import Message
from herald.clock import FakeClock
from herald.relay import Relay
from herald.runtime import Runtime


async def make_deliveries(api: httpx.AsyncClient, runtime: Runtime, count: int) -> list[str]:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    items = [
        {"idempotency_key": f"c{n}", "user_id": "u", "title": "x", "channels": ["in_app"]}
        for n in range(count)
    ]
    accepted = await api.post("/v1/notifications/batch", json={"notifications": items})
    ids = [item["id"] for item in accepted.json()["items"]]
    await runtime.router().route(ids)
    return [d.id for n in ids for d in await runtime.store.list_deliveries(n)]


async def test_racing_claims_give_each_delivery_to_one_worker(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    ids = await make_deliveries(api, runtime, 200)
    claims = await asyncio.gather(*(runtime.store.claim_deliveries(ids, 30) for _ in range(6)))
    winners = Counter(d.id for claim in claims for d in claim)
    assert set(winners) == set(ids)
    assert set(winners.values()) == {1}


async def test_racing_schedulers_release_each_due_delivery_once(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    ids = await make_deliveries(api, runtime, 150)
    await runtime.store.claim_deliveries(ids, lease_seconds=-1)  # leases already expired
    results = await asyncio.gather(*(runtime.store.expire_leases(40) for _ in range(6)))
    released = Counter(r.delivery_id for requeued, _ in results for r in requeued)
    assert set(released.values()) == {1}
    while True:  # what the racing pass left, a later pass takes
        more, _ = await runtime.store.expire_leases(500)
        if not more:
            break
        released.update(r.delivery_id for r in more)
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
    relays = [Relay(runtime.store, bus, batch=25) for _ in range(4)]  # type: ignore[arg-type]
    while await runtime.store.outbox_size():
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

    with pytest.raises(ConnectionError):
        await Relay(runtime.store, DownBus()).relay_once()  # type: ignore[arg-type]
    assert await runtime.store.outbox_size() == 1


async def test_old_delivery_events_are_dropped_after_the_retention(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """PostgreSQL drops whole day partitions; SQLite deletes the rows."""
    store = runtime.store
    real_clock = store.clock
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    store.clock = FakeClock(real_clock.now() - timedelta(days=5))
    await store.maintain()  # on PostgreSQL: the partitions around five days ago
    old = (await api.post("/v1/notifications", json={"user_id": "u", "title": "old"})).json()["id"]
    await runtime.router().route([old])
    store.clock = real_clock
    new = (await api.post("/v1/notifications", json={"user_id": "u", "title": "new"})).json()["id"]
    await runtime.router().route([new])
    assert await store.list_events(old)
    store.retention_days = 2
    await store.maintain()
    assert await store.list_events(old) == []
    assert await store.list_events(new)
