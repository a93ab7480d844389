"""Priority lanes: critical and high travel on their own topics and consumers, so a bulk
backlog does not hold them up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import orjson

from herald.bus.interface import Lane, deliveries_topic, notifications_topic
from herald.domain import Channel
from herald.relay import Relay
from herald.runtime import Runtime
from herald.workers.worker import ChannelWorker
from tests.fixtures.herald import Pipeline, all_relayable, eventually


async def drain(runtime: Runtime, topic: str, field: str) -> list[str]:
    consumer = runtime.bus.consumer([topic], f"probe-{topic}")
    found: list[str] = []
    for _ in range(10):
        messages = await consumer.poll(100, timeout=0.5)
        found += [orjson.loads(m.value)[field] for m in messages]
        if not messages and found:
            break
    await consumer.close()
    return found


async def test_each_priority_takes_its_lane(api: httpx.AsyncClient, runtime: Runtime) -> None:
    await api.put("/v1/users/u", json={})
    ids = {}
    for priority in ("critical", "high", "normal", "low"):
        body = {"user_id": "u", "title": priority, "priority": priority, "channels": ["in_app"]}
        ids[priority] = (await api.post("/v1/notifications", json=body)).json()["id"]
    await all_relayable(runtime)
    await runtime.make_relay().relay_once()
    assert sorted(
        await drain(runtime, notifications_topic(Lane.PRIORITY), "notification_id")
    ) == sorted([ids["critical"], ids["high"]])
    assert sorted(
        await drain(runtime, notifications_topic(Lane.BULK), "notification_id")
    ) == sorted([ids["normal"], ids["low"]])
    await runtime.router().route(list(ids.values()))
    urgent = await drain(runtime, deliveries_topic(Channel.IN_APP, Lane.PRIORITY), "delivery_id")
    bulk = await drain(runtime, deliveries_topic(Channel.IN_APP, Lane.BULK), "delivery_id")
    owner = {
        d.id: p
        for p, n in ids.items()
        for d in await runtime.storage.notifications.deliveries_of(n)
    }
    assert sorted(owner[d] for d in urgent) == ["critical", "high"]
    assert sorted(owner[d] for d in bulk) == ["low", "normal"]


async def test_a_critical_notification_overtakes_a_bulk_backlog(
    api: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/u", json={})
    bulk = [
        {
            "idempotency_key": f"bulk-{n}",
            "user_id": "u",
            "title": "sale",
            "priority": "low",
            "channels": ["in_app"],
        }
        for n in range(1000)
    ]
    backlog = 6000  # deep enough that draining it takes seconds even on a quiet machine
    for start in range(0, backlog, 1000):
        batch = [{**item, "idempotency_key": f"{item['idempotency_key']}-{start}"} for item in bulk]
        assert (
            await api.post("/v1/notifications/batch", json={"notifications": batch})
        ).status_code == 200
    otp = await api.post(
        "/v1/notifications",
        json={
            "user_id": "u",
            "title": "code 123456",
            "priority": "critical",
            "channels": ["in_app"],
        },
    )

    async def otp_delivered() -> bool:
        (delivery,) = (await api.get(f"/v1/notifications/{otp.json()['id']}")).json()[
            "deliveries"
        ] or [{}]
        return delivery.get("status") == "delivered"

    await eventually(otp_delivered, timeout=120, interval=0.05)
    ahead = await _stored_before(runtime, otp.json()["id"])
    # Lanes, not luck: the critical one lands before most of the backlog (measured by what
    # the inbox stored ahead of it, not by when the test happened to look).
    assert ahead < 0.9 * backlog, f"{ahead} of {backlog} bulk items arrived first"


async def _stored_before(runtime: Runtime, notification_id: str) -> int:
    import sqlalchemy as sa

    from herald.storage import schema as t

    items = t.inbox_items
    async with runtime.storage.database.reading() as db:
        landed = await db.scalar(
            sa.select(items.c.created_at).where(items.c.notification_id == notification_id)
        )
        return int(
            await db.scalar(
                sa.select(sa.func.count())
                .select_from(items)
                .where(items.c.user_id == "u", items.c.created_at < landed)
            )
            or 0
        )


async def test_the_relay_publishes_urgent_outbox_rows_before_a_bulk_backlog(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={})
    bulk = [
        {"idempotency_key": f"b{n}", "user_id": "u", "title": "sale", "priority": "low"}
        for n in range(1000)
    ]
    for page in range(3):
        await api.post("/v1/notifications/batch", json={"notifications": bulk[page::3]})
    otp = {"user_id": "u", "title": "code", "priority": "critical"}
    urgent = (await api.post("/v1/notifications", json=otp)).json()["id"]
    relay = Relay(runtime.storage.outbox, runtime.bus, batch=100)
    await all_relayable(runtime)
    assert await relay.relay_once() == 100
    first = await drain(runtime, notifications_topic(Lane.PRIORITY), "notification_id")
    assert first == [urgent]
    assert await runtime.storage.outbox.size() == 901


async def test_a_priority_only_pool_takes_urgent_work_and_leaves_bulk_alone(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={})
    ids = {}
    for priority in ("critical", "low"):
        body = {"user_id": "u", "title": priority, "priority": priority, "channels": ["in_app"]}
        ids[priority] = (await api.post("/v1/notifications", json=body)).json()["id"]
    providers = runtime.build_providers()
    await providers.start()
    worker = ChannelWorker(
        Channel.IN_APP,
        runtime.storage.deliveries,
        runtime.bus,
        providers,
        runtime.clock,
        runtime.worker_settings(),
    )
    stop = asyncio.Event()
    lanes = (Lane.PRIORITY,)
    tasks = [
        asyncio.create_task(role)
        for role in (
            runtime.make_relay().run(stop),
            runtime.router().run(stop, lanes),
            worker.run(stop, lanes),
        )
    ]
    try:

        async def states() -> dict[str, str]:
            found = {}
            for priority, notification_id in ids.items():
                notification = await runtime.storage.notifications.get(notification_id)
                deliveries = await runtime.storage.notifications.deliveries_of(notification_id)
                assert notification is not None
                found[priority] = ",".join(d.state for d in deliveries) or notification.state
            return found

        await eventually(lambda: _matches(states, {"critical": "delivered", "low": "accepted"}))
        await asyncio.sleep(1.0)  # and the bulk one stays untouched
        assert await states() == {"critical": "delivered", "low": "accepted"}
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _matches(check: Callable[[], Awaitable[object]], expected: object) -> bool:
    return await check() == expected
