"""A message a role cannot process is set aside with its reason (delivery log, dead-letter
topic) and never holds its batch back; an outage sets nothing aside and is waited out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from herald.bus.interface import DEAD_LETTER_TOPIC, Bus, BusUnavailable, Message
from herald.bus.memory import MemoryBus
from herald.bus.messages import notification_record
from herald.domain import DeliveryState, Notification, NotificationState, Priority
from herald.outages import is_outage
from herald.roles import Backoff, consume_loop
from herald.router import router as router_module
from herald.runtime import Runtime
from herald.storage import NewNotification
from herald.storage.records import RoutingInput
from tests.fixtures.herald import eventually
from tests.test_broadcasts import add_subscribers

FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def new_notification(
    key: str, user_id: str, send_at: datetime | None = None, priority: Priority = Priority.NORMAL
) -> NewNotification:
    """Straight into the store, as the API's own checks would not let it in."""
    notification = Notification(
        id=f"n-{key}",
        user_id=user_id,
        category="default",
        priority=priority,
        title="hello",
        body="world",
        channels=None,
        send_at=send_at,
    )
    content = {"title": "hello", "body": "world"}
    return NewNotification(notification, key, key, content)


async def dead_letters(bus: Bus, group: str) -> list[dict[str, Any]]:
    consumer = bus.consumer([DEAD_LETTER_TOPIC], group)
    try:
        found: list[dict[str, Any]] = []
        for _ in range(20):
            batch = await consumer.poll(100, timeout=0.5)
            found += [orjson.loads(m.value) for m in batch]
            if found and not batch:
                break
        return found
    finally:
        await consumer.close()


@pytest.mark.expect_errors  # setting a message aside is logged as an error
async def test_a_notification_the_router_cannot_route_is_set_aside_and_its_batch_is_routed(
    api: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 18's poison was a year-9999 send_at for a user with quiet hours in Berlin: the
    # planner raised OverflowError. Quiet hours answer for it now (tests/domain), so the
    # planner is made to raise the same way for one notification: what is tested here is
    # what the router does with any notification it cannot plan.
    real_plan = router_module.plan_routing

    def plan_or_overflow(routing: RoutingInput, *args: Any) -> Any:
        if routing.notification.id == "n-poison":
            raise OverflowError("date value out of range")
        return real_plan(routing, *args)

    monkeypatch.setattr(router_module, "plan_routing", plan_or_overflow)
    healthy = [f"u{n}" for n in range(6)]
    for user in healthy:
        await api.put(f"/v1/users/{user}", json={})
    items = [new_notification(f"ok-{u}", u) for u in healthy[:3]]
    items.append(new_notification("poison", healthy[0], send_at=FAR_FUTURE))
    items += [new_notification(f"ok-{u}", u) for u in healthy[3:]]
    await runtime.storage.notifications.accept(items)
    # One batch on the bus, the poison in the middle (no relay runs: the test publishes).
    await runtime.bus.publish(
        [notification_record(i.notification.id, i.notification.user_id, "normal") for i in items]
    )
    stop = asyncio.Event()
    router = asyncio.create_task(runtime.router().run(stop))
    try:

        async def settled() -> list[NotificationState] | None:
            states = [
                n.state
                for i in items
                if (n := await runtime.storage.notifications.get(i.notification.id))
            ]
            return states if NotificationState.ACCEPTED not in states else None

        states = await eventually(settled, timeout=60)
    finally:
        stop.set()
        await router
    assert (
        states
        == [NotificationState.ROUTED] * 3
        + [NotificationState.FAILED]
        + [NotificationState.ROUTED] * 3
    )
    for item in items:
        if item.idempotency_key.startswith("ok-"):
            deliveries = await runtime.storage.notifications.deliveries_of(item.notification.id)
            assert DeliveryState.QUEUED in {d.state for d in deliveries}  # in_app
    events = (await api.get("/v1/notifications/n-poison/events")).json()["items"]
    assert [(e["status"], e["detail"]["set_aside"]) for e in events] == [("failed", True)]
    assert "could not be routed: OverflowError" in events[0]["detail"]["reason"]
    assert (await api.get("/v1/notifications/n-poison")).json()["status"] == "failed"
    letters = await dead_letters(runtime.bus, "test.deadletter")
    assert [(d["notification_id"], d["set_aside_by"]) for d in letters] == [
        ("n-poison", "herald.router.bulk")
    ]
    assert letters[0]["error"].startswith("OverflowError")
    assert orjson.loads(letters[0]["message"]) == {"notification_id": "n-poison"}
    # Handed out again (a restart, the scheduler's sweep): it stays set aside.
    assert await runtime.storage.scheduling.stale_notifications(datetime.now(UTC), 10) == []


class Flaky:
    """A role whose dependency is down for its first `outages` batches, and which cannot
    process the message b"poison" at all."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.handled: list[bytes] = []

    async def handle(self, messages: Sequence[Message]) -> None:
        if self.outages:
            self.outages -= 1
            raise BusUnavailable("broker down")
        if any(m.value == b"poison" for m in messages):
            raise ValueError("cannot process this one")
        self.handled += [m.value for m in messages]


async def test_an_outage_is_waited_out_and_sets_nothing_aside() -> None:
    from herald.bus.interface import Record

    bus = MemoryBus(partitions=1)
    values = [b"a", b"b", b"poison", b"c", b"d"]
    await bus.publish([Record("t", "k", v) for v in values])
    role = Flaky(outages=4)
    stop = asyncio.Event()
    backoff = Backoff(initial=0.01, cap=0.04)
    delays: list[float] = []
    next_delay = backoff.next_delay

    def recorded() -> float:
        delays.append(next_delay())
        return delays[-1]

    backoff.next_delay = recorded  # type: ignore[method-assign]
    set_aside: list[tuple[bytes, str]] = []

    async def note(message: Message, reason: str) -> None:
        set_aside.append((message.value, reason))

    task = asyncio.create_task(
        consume_loop(bus, ["t"], "g", role.handle, stop, name="t", set_aside=note, backoff=backoff)
    )
    try:
        await eventually(lambda: _async(len(role.handled) == 4))
    finally:
        stop.set()
        await task
    assert role.handled == [b"a", b"b", b"c", b"d"]
    assert set_aside == [(b"poison", "ValueError: cannot process this one")]
    assert len(delays) == 4  # one pause per outage, growing and capped
    assert delays[0] < delays[2]
    assert max(delays) <= 0.04 * 1.2
    letters = await dead_letters(bus, "test.deadletter")
    assert [(d["message"], d["set_aside_by"]) for d in letters] == [("poison", "g")]


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (BusUnavailable("down"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (OverflowError("date value out of range"), False),
        (ValueError("bad"), False),
    ],
)
def test_outages_are_told_from_bad_messages(error: Exception, outage: bool) -> None:
    assert is_outage(error) is outage


@pytest.mark.expect_errors  # setting a message aside is logged as an error
async def test_a_broadcast_page_that_cannot_be_fanned_out_is_set_aside(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    from herald.router.fanout import BroadcastFanout, page_record

    await add_subscribers(runtime, "news", 5)
    templates = {
        "broken": {"title": "x", "channels": ["fax"]},  # no such channel: cannot be built
        "fine": {"title": "x", "channels": ["in_app"]},
    }
    pages = []
    for name, template in templates.items():
        page = page_record(name, None)
        await runtime.storage.broadcasts.create_broadcast(
            broadcast_id=name,
            idempotency_key=name,
            request_hash=name,
            topic="news",
            user_ids=None,
            template=template,
            first_page=(page.topic, page.key, page.value),
        )
        pages.append(page)
    await runtime.bus.publish(pages)
    stop = asyncio.Event()
    fanout = asyncio.create_task(BroadcastFanout(runtime.storage.broadcasts, runtime.bus).run(stop))
    try:

        async def settled() -> dict[str, str] | None:
            states = {
                name: (await runtime.storage.broadcasts.get_broadcast(name) or {})["state"]
                for name in templates
            }
            return states if "fanning_out" not in states.values() else None

        states = await eventually(settled, timeout=60)
    finally:
        stop.set()
        await fanout
    assert states == {"broken": "failed", "fine": "fanned_out"}
    assert (await runtime.storage.broadcasts.broadcast_progress("fine"))["recipients_created"] == 5
    letters = await dead_letters(runtime.bus, "test.deadletter")
    assert [(d["broadcast_id"], d["set_aside_by"]) for d in letters] == [
        ("broken", "herald.fanout")
    ]
    assert "'fax' is not a valid Channel" in letters[0]["error"]


@pytest.mark.expect_errors  # setting a message aside is logged as an error
async def test_a_delivery_a_worker_cannot_process_is_set_aside(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    import sqlalchemy as sa

    from herald.domain import Channel
    from herald.storage import schema as t
    from herald.workers.worker import ChannelWorker

    await api.put("/v1/users/u1", json={})
    ids = []
    for title in ("good", "bad"):
        body = {"user_id": "u1", "title": title, "channels": ["in_app"]}
        ids.append((await api.post("/v1/notifications", json=body)).json()["id"])
    await runtime.router().route(ids)  # both deliveries published, in one partition
    d = t.deliveries.c
    async with runtime.storage.database.transaction() as db:  # a row no code can read back
        await db.execute(
            t.deliveries.update().where(d.notification_id == ids[1]).values(priority="bogus")
        )
    worker = ChannelWorker(
        Channel.IN_APP,
        runtime.storage.deliveries,
        runtime.bus,
        runtime.build_providers(),
        runtime.clock,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def settled() -> list[tuple[str, str]] | None:
            async with runtime.storage.database.reading() as db:
                rows = list(
                    await db.execute(
                        sa.select(d.notification_id, d.state, d.last_error).where(
                            d.notification_id.in_(ids)
                        )
                    )
                )
            states = sorted((r.notification_id == ids[0], r.state) for r in rows)
            done = {s for _, s in states} <= {"delivered", "failed"}
            return [(("good" if g else "bad"), s) for g, s in states] if done else None

        states = await eventually(settled, timeout=60)
    finally:
        stop.set()
        await task
    assert sorted(states) == [("bad", "failed"), ("good", "delivered")]
    events = (await api.get(f"/v1/notifications/{ids[1]}/events")).json()["items"]
    assert events[-1]["status"] == "failed"
    assert events[-1]["detail"]["set_aside"] is True
    assert "could not be processed: ValueError" in events[-1]["detail"]["reason"]
    letters = await dead_letters(runtime.bus, "test.deadletter")
    assert [d["set_aside_by"] for d in letters] == ["herald.worker.in_app.bulk"]
