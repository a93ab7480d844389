"""Topics and broadcasts on both backend sets: fan-out in pages, idempotent replays,
progress and cancel."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from herald.router.fanout import BroadcastFanout
from herald.runtime import Runtime
from herald.storage import schema as t
from tests.fixtures.herald import Pipeline, eventually


async def add_subscribers(runtime: Runtime, topic: str, count: int) -> list[str]:
    """Users and subscriptions written in bulk (the API path is tested separately)."""
    now = datetime.now(UTC)
    users = [f"s{n:06d}" for n in range(count)]
    rows = [
        {
            "id": u,
            "timezone": "UTC",
            "locale": "en",
            "preferences": {},
            "created_at": now,
            "updated_at": now,
        }
        for u in users
    ]
    async with runtime.storage.database.engine.begin() as db:
        for start in range(0, count, 2000):
            await db.execute(t.users.insert(), rows[start : start + 2000])
            await db.execute(
                t.topic_subscriptions.insert(),
                [
                    {"topic": topic, "user_id": u, "created_at": now}
                    for u in users[start : start + 2000]
                ],
            )
    return users


async def test_subscriptions_both_ways(api: httpx.AsyncClient) -> None:
    await api.put("/v1/users/u1", json={})
    assert (await api.put("/v1/users/u1/topics/news")).status_code == 201
    assert (await api.put("/v1/users/u1/topics/news")).status_code == 200
    assert (await api.put("/v1/users/u1/topics/sports")).status_code == 201
    assert (await api.get("/v1/users/u1/topics")).json()["items"] == [
        {"topic": "news"},
        {"topic": "sports"},
    ]
    assert (await api.get("/v1/topics/news/subscribers")).json()["items"] == [{"user_id": "u1"}]
    assert (await api.delete("/v1/users/u1/topics/news")).status_code == 204
    assert (await api.get("/v1/topics/news/subscribers")).json()["items"] == []
    assert (await api.put("/v1/users/ghost/topics/news")).status_code == 404


async def test_a_broadcast_reaches_every_subscriber_once(
    api: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    users = await add_subscribers(runtime, "news", 1000)
    body = {
        "topic": "news",
        "notification": {"title": "Breaking", "channels": ["in_app"], "category": "news"},
    }
    created = await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "b1"})
    assert created.status_code == 202
    assert created.json()["planned"] == 1000
    broadcast_id = created.json()["id"]

    async def done() -> dict[str, object] | None:
        progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
        return progress if progress.get("deliveries_delivered") == 1000 else None

    progress = await eventually(done, timeout=120, interval=0.5)
    assert (progress["state"], progress["recipients_created"], progress["routed"]) == (
        "fanned_out",
        1000,
        1000,
    )
    async with runtime.storage.database.engine.connect() as db:
        per_user = Counter(
            row.user_id for row in await db.execute(sa.select(t.inbox_items.c.user_id))
        )
    assert set(per_user) == set(users)
    assert set(per_user.values()) == {1}
    replay = await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "b1"})
    assert (replay.status_code, replay.json()["id"]) == (200, broadcast_id)
    other = await api.post(
        "/v1/broadcasts", json={**body, "topic": "sports"}, headers={"Idempotency-Key": "b1"}
    )
    assert other.status_code == 409


async def test_a_restarted_fan_out_creates_nobody_twice(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await add_subscribers(runtime, "news", 250)
    body = {"topic": "news", "notification": {"title": "x", "channels": ["in_app"]}}
    broadcast_id = (
        await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "b2"})
    ).json()["id"]
    fanout = BroadcastFanout(runtime.storage.broadcasts, runtime.bus, page_size=100)
    assert await fanout.fan_out_page(broadcast_id, None) == 100
    assert await fanout.fan_out_page(broadcast_id, None) == 100  # the page replayed after a crash
    assert await fanout.fan_out_page(broadcast_id, "s000099") == 100
    assert await fanout.fan_out_page(broadcast_id, "s000199") == 50
    assert (
        await fanout.fan_out_page(broadcast_id, "s000099") == 100
    )  # a late duplicate page message
    async with runtime.storage.database.engine.connect() as db:
        notifications = await db.execute(
            sa.select(t.notifications.c.user_id).where(
                t.notifications.c.broadcast_id == broadcast_id
            )
        )
        per_user = Counter(row.user_id for row in notifications)
    assert len(per_user) == 250
    assert set(per_user.values()) == {1}
    assert (await runtime.storage.broadcasts.get_broadcast(broadcast_id) or {})[
        "state"
    ] == "fanned_out"


async def test_explicit_recipients_and_bad_audiences(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    for user in ("a", "b", "c"):
        await api.put(f"/v1/users/{user}", json={})
    body = {
        "user_ids": ["a", "b", "c", "a"],
        "notification": {"title": "x", "channels": ["in_app"]},
    }
    created = await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "b3"})
    assert created.json()["planned"] == 3
    fanout = BroadcastFanout(runtime.storage.broadcasts, runtime.bus)
    assert await fanout.fan_out_page(created.json()["id"], None) == 3
    for bad, words in (
        ({"notification": {"title": "x"}}, "either"),
        ({"topic": "t", "user_ids": ["a"], "notification": {"title": "x"}}, "either"),
        ({"topic": "t", "notification": {}}, "needs a title"),
    ):
        response = await api.post("/v1/broadcasts", json=bad, headers={"Idempotency-Key": "bad"})
        assert response.status_code == 422
        assert words in response.json()["error"]["message"]
    missing_key = await api.post("/v1/broadcasts", json=body)
    assert missing_key.status_code == 422


async def test_cancelling_a_broadcast_stops_what_has_not_been_sent(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await add_subscribers(runtime, "news", 150)
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    body = {
        "topic": "news",
        "notification": {"title": "x", "channels": ["in_app"], "send_at": later},
    }
    broadcast_id = (
        await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "b4"})
    ).json()["id"]
    fanout = BroadcastFanout(runtime.storage.broadcasts, runtime.bus, page_size=100)
    await fanout.fan_out_page(broadcast_id, None)
    async with runtime.storage.database.engine.connect() as db:
        ids = [
            r.id
            for r in await db.execute(
                sa.select(t.notifications.c.id).where(
                    t.notifications.c.broadcast_id == broadcast_id
                )
            )
        ]
    await runtime.router().route(ids[:50])  # half routed (deferred deliveries), half not yet
    cancelled = await api.post(f"/v1/broadcasts/{broadcast_id}/cancel")
    assert cancelled.json()["deliveries_cancelled"] == 50
    assert await fanout.fan_out_page(broadcast_id, "s000099") == 0  # the fan-out stops
    await runtime.router().route(ids)
    progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
    assert progress["state"] == "cancelled"
    assert progress["recipients_created"] == 100
    assert progress.get("deliveries_skipped") == 50
    assert "deliveries_deferred" not in progress
    assert "deliveries_queued" not in progress


@pytest.mark.long
@pytest.mark.timeout(3600)
async def test_a_broadcast_to_100_000_subscribers(
    api: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    await add_subscribers(runtime, "everyone", 100_000)
    body = {
        "topic": "everyone",
        "notification": {"title": "Hello", "channels": ["in_app"], "priority": "low"},
    }
    broadcast_id = (
        await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "big"})
    ).json()["id"]
    started = datetime.now(UTC)

    async def done() -> dict[str, object] | None:
        progress = (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()
        return progress if progress.get("deliveries_delivered") == 100_000 else None

    await eventually(done, timeout=1800, interval=5)
    seconds = (datetime.now(UTC) - started).total_seconds()
    print(f"broadcast to 100,000: {seconds:.0f}s, {100_000 / seconds:.0f} recipients/s")
