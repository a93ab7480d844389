"""The whole flow in one event loop: API → outbox → relay → bus → router → workers →
providers (sandbox, inbox) → delivery log, on both backend sets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from herald.bus.interface import Bus, Lane, Record, deliveries_topic
from herald.bus.messages import ids_in
from herald.clock import FakeClock
from herald.domain import Channel, DeliveryState
from herald.router.router import Router
from herald.runtime import Runtime
from herald.workers.worker import ChannelWorker
from tests.fixtures.herald import Pipeline, eventually
from tests.fixtures.sends import SendsTwice, assert_sent_once, sandbox_rows, sends_per_delivery

ANDROID = "dXNlcjQyX2RldmljZQ:APA91bH" + "a" * 140
IOS = "ab" * 32
USER = {"email": "ada@example.com", "phone": "+14155550100", "timezone": "UTC"}


async def deliveries(api: httpx.AsyncClient, notification_id: str) -> list[dict[str, Any]]:
    body = (await api.get(f"/v1/notifications/{notification_id}")).json()
    return list(body["deliveries"])


async def settled(api: httpx.AsyncClient, notification_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until the notification has `count` deliveries, none of them still in flight."""

    async def check() -> list[dict[str, Any]] | None:
        found = await deliveries(api, notification_id)
        busy = {"queued", "sending"}
        return found if len(found) == count and not busy & {d["status"] for d in found} else None

    result: list[dict[str, Any]] = await eventually(check)
    return result


@pytest.fixture
def clock() -> FakeClock:
    """Time moves only when a test says so: deferrals and leases run out on cue."""
    return FakeClock(datetime.now(UTC))


async def sends(api: httpx.AsyncClient, user: str) -> Any:
    """How many times each of the user's deliveries went out (sandbox and inbox)."""
    inbox = (await api.get(f"/v1/users/{user}/inbox")).json()["items"]
    return sends_per_delivery(await sandbox_rows(api, user_id=user), inbox)


@pytest.fixture
async def user(api: httpx.AsyncClient) -> str:
    await api.put("/v1/users/42", json=USER)
    for device in ({"platform": "android", "token": ANDROID}, {"platform": "ios", "token": IOS}):
        assert (await api.post("/v1/users/42/devices", json=device)).status_code == 201
    return "42"


async def test_a_notification_reaches_every_channel_once(
    api: httpx.AsyncClient, pipeline: Pipeline, user: str
) -> None:
    accepted = await api.post(
        "/v1/notifications",
        json={
            "user_id": user,
            "title": "Paid",
            "body": "Your payment went through",
            "data": {"order": 7},
        },
        headers={"Idempotency-Key": "pay-42"},
    )
    notification_id = accepted.json()["id"]
    found = await settled(api, notification_id, 5)
    by_channel = sorted((d["channel"], d["status"]) for d in found)
    assert by_channel == [
        ("email", "sent"),
        ("in_app", "delivered"),
        ("push", "sent"),
        ("push", "sent"),
        ("sms", "sent"),
    ]
    sandbox = (await api.get("/v1/sandbox/messages", params={"user_id": user})).json()["items"]
    assert sorted(m["channel"] for m in sandbox) == ["email", "push", "push", "sms"]
    assert {m["target"] for m in sandbox if m["channel"] == "push"} == {ANDROID, IOS}
    email = next(m for m in sandbox if m["channel"] == "email")
    assert email["payload"]["subject"] == "Paid"
    assert email["payload"]["unsubscribe_url"].startswith("http")
    inbox = (await api.get(f"/v1/users/{user}/inbox")).json()
    assert [(i["title"], i["body"], i["data"]) for i in inbox["items"]] == [
        ("Paid", "Your payment went through", {"order": 7})
    ]
    assert inbox["unread_count"] == 1
    assert_sent_once(await sends(api, user), expected={d["id"] for d in found})
    events = (await api.get(f"/v1/notifications/{notification_id}/events")).json()["items"]
    push_id = next(d["id"] for d in found if d["channel"] == "push")
    assert [e["status"] for e in events if e["delivery_id"] == push_id] == [
        "queued",
        "sending",
        "sent",
    ]


async def test_the_same_key_twice_is_one_set_of_deliveries(
    api: httpx.AsyncClient, pipeline: Pipeline, user: str, runtime: Runtime
) -> None:
    body = {"user_id": user, "title": "Once", "channels": ["push", "in_app"]}
    first = await api.post("/v1/notifications", json=body, headers={"Idempotency-Key": "k"})
    found = await settled(api, first.json()["id"], 3)
    second = await api.post("/v1/notifications", json=body, headers={"Idempotency-Key": "k"})
    assert second.json()["id"] == first.json()["id"]
    await runtime.make_relay().relay_once()  # anything the replay wrote is on the bus now
    await runtime.router().route([first.json()["id"]])  # and routing it again adds nothing
    assert_sent_once(await sends(api, user), expected={d["id"] for d in found})
    assert (await api.get(f"/v1/users/{user}/inbox")).json()["unread_count"] == 1


async def test_a_worker_that_sends_twice_fails_the_sent_once_check(
    api: httpx.AsyncClient, runtime: Runtime, user: str
) -> None:
    """The test of the test: a broken build whose worker hands every batch to the provider
    twice must make `assert_sent_once` fail, in the sandbox and in the inbox alike."""
    broken = Pipeline(runtime, wrap=SendsTwice)
    await broken.start()
    try:
        accepted = await api.post(
            "/v1/notifications",
            json={"user_id": user, "title": "Twice", "channels": ["push", "in_app"]},
        )
        found = await settled(api, accepted.json()["id"], 3)
    finally:
        await broken.close()
    counts = await sends(api, user)
    assert counts == {d["id"]: 2 for d in found}
    with pytest.raises(AssertionError, match="sent more than once"):
        assert_sent_once(counts, expected={d["id"] for d in found})
    inbox = (await api.get(f"/v1/users/{user}/inbox")).json()
    assert [i["sends"] for i in inbox["items"]] == [2]  # one item shown, the repeat counted


async def test_preferences_decide_the_channels(
    api: httpx.AsyncClient, pipeline: Pipeline, user: str
) -> None:
    await api.put(
        f"/v1/users/{user}/preferences",
        json={"channels": {"sms": False}, "categories": {"marketing": {"email": False}}},
    )
    accepted = await api.post(
        "/v1/notifications", json={"user_id": user, "category": "marketing", "title": "Sale"}
    )
    found = await settled(api, accepted.json()["id"], 5)
    status = {(d["channel"], d["status"]) for d in found}
    assert ("sms", "skipped") in status
    assert ("email", "skipped") in status
    reasons = {d["channel"]: d["last_error"] for d in found if d["status"] == "skipped"}
    assert reasons == {"sms": "channel disabled by user", "email": "category 'marketing' opted out"}
    critical = await api.post(
        "/v1/notifications",
        json={"user_id": user, "category": "marketing", "title": "Fraud", "priority": "critical"},
    )
    found = await settled(api, critical.json()["id"], 5)
    assert {(d["channel"], d["status"]) for d in found} >= {("email", "sent"), ("sms", "skipped")}


async def test_quiet_hours_defer_to_the_window_end(
    api: httpx.AsyncClient, pipeline: Pipeline, user: str, clock: FakeClock
) -> None:
    now = clock.now()
    start = (now - timedelta(hours=1)).strftime("%H:%M")
    end = (now + timedelta(hours=2)).strftime("%H:%M")
    await api.put(
        f"/v1/users/{user}/preferences", json={"quiet_hours": {"start": start, "end": end}}
    )
    accepted = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "Later", "channels": ["email"]}
    )
    (found,) = await settled(api, accepted.json()["id"], 1)
    assert found["status"] == "deferred"
    due = datetime.fromisoformat(found["due_at"])
    assert timedelta(hours=1, minutes=59) <= due - now <= timedelta(hours=2)


async def test_deferred_deliveries_go_out_when_due(
    api: httpx.AsyncClient, pipeline: Pipeline, user: str, runtime: Runtime, clock: FakeClock
) -> None:
    send_at = (clock.now() + timedelta(seconds=1.5)).isoformat()
    accepted = await api.post(
        "/v1/notifications",
        json={"user_id": user, "title": "Soon", "channels": ["email"], "send_at": send_at},
    )
    (found,) = await settled(api, accepted.json()["id"], 1)
    assert found["status"] == "deferred"
    assert await runtime.scheduler().tick() == 0  # not due: however long the test took
    assert (await deliveries(api, accepted.json()["id"]))[0]["status"] == "deferred"
    clock.advance(1.5)

    async def sent() -> bool:
        (delivery,) = await deliveries(api, accepted.json()["id"])
        return bool(delivery["status"] == "sent")

    await eventually(sent, timeout=15)


async def test_a_worker_killed_after_its_claim_is_recovered_by_the_lease(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    """A worker claims and dies before sending or recording. When the lease expires the
    scheduler re-queues the at_least_once delivery and another worker sends it once; the
    at_most_once one (SMS) ends `unknown` and is never sent."""
    accepted = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "x", "channels": ["push", "sms"]}
    )
    router = runtime.router()
    await router.route([accepted.json()["id"]])
    ids = [d["id"] for d in await deliveries(api, accepted.json()["id"])]
    assert (
        len((await runtime.storage.deliveries.claim(ids, lease_seconds=0.2)).claimed) == 3
    )  # the worker that died
    scheduler = runtime.scheduler()
    assert await scheduler.tick() == 0  # the lease still runs
    assert isinstance(runtime.clock, FakeClock)
    runtime.clock.advance(0.3)
    assert await scheduler.tick() == 2
    providers = runtime.build_providers()
    for channel in (Channel.PUSH, Channel.SMS):
        worker = ChannelWorker(
            channel, runtime.storage.deliveries, runtime.bus, providers, runtime.clock
        )
        await worker.process(ids)
    found = {d["id"]: d for d in await deliveries(api, accepted.json()["id"])}
    assert sorted((d["channel"], d["status"], d["attempts"]) for d in found.values()) == [
        ("push", "sent", 2),
        ("push", "sent", 2),
        ("sms", "unknown", 1),
    ]
    sandbox = await sandbox_rows(api)
    assert sorted(m["channel"] for m in sandbox) == ["push", "push"]
    assert_sent_once(
        sends_per_delivery(sandbox), expected={i for i in ids if found[i]["channel"] == "push"}
    )


async def test_redelivered_bus_messages_send_nothing_twice(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    accepted = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "x", "channels": ["push"]}
    )
    router = runtime.router()
    for _ in range(3):  # the router's batch replayed: no new rows
        await router.route([accepted.json()["id"]])
    ids = [d["id"] for d in await deliveries(api, accepted.json()["id"])]
    worker = ChannelWorker(
        Channel.PUSH,
        runtime.storage.deliveries,
        runtime.bus,
        runtime.build_providers(),
        runtime.clock,
    )
    results = await asyncio.gather(*(worker.process(ids) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]
    assert_sent_once(sends_per_delivery(await sandbox_rows(api)), expected=set(ids))
    assert {
        d.state for d in await runtime.storage.notifications.deliveries_of(accepted.json()["id"])
    } == {DeliveryState.SENT}


class DiesBeforePublishing:
    """The router's bus in a process killed between its routing commit and its publish."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def publish(self, records: Sequence[Record]) -> None:
        raise RuntimeError("killed before publishing")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)


async def test_a_batch_replayed_after_a_crash_before_publishing_publishes_the_deliveries(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    accepted = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "x", "channels": ["push"]}
    )
    notification_id = accepted.json()["id"]
    dying = Router(
        runtime.storage.routing,
        runtime.storage.broadcasts,
        DiesBeforePublishing(runtime.bus),
        runtime.clock,
    )  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await dying.route([notification_id])
    written = await runtime.storage.notifications.deliveries_of(notification_id)
    assert written
    assert {d.state for d in written} == {DeliveryState.QUEUED}  # committed, never published
    consumer = runtime.bus.consumer([deliveries_topic(Channel.PUSH, Lane.BULK)], "test.replay")
    try:
        await runtime.router().route([notification_id])  # the bus hands the batch out again
        published: list[str] = []
        for _ in range(20):
            published += ids_in(await consumer.poll(10, timeout=0.5), "delivery_id")
            if len(published) >= len(written):
                break
    finally:
        await consumer.close()
    assert sorted(published) == sorted(d.id for d in written)
