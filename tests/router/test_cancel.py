"""A cancel is never lost: whether it lands before, during or after routing (or a broadcast's
fan-out), nothing that was not already sent goes out afterwards. "During" is made
deterministic by a store whose read for the router (or the fan-out) lets the cancel commit
right after it, which is exactly the window where the router used to overwrite it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from herald.bus.memory import MemoryBus
from herald.clock import SYSTEM_CLOCK
from herald.domain import Channel, DeliveryState, NotificationState, User
from herald.router.fanout import BroadcastFanout
from herald.router.router import Router
from herald.runtime import Runtime
from herald.storage import Storage
from herald.storage import schema as t
from herald.storage.records import RoutingInput
from herald.workers.worker import ChannelWorker
from tests.fixtures.activity import routing_held_open, waits_for_a_lock
from tests.fixtures.herald import eventually
from tests.router.test_poison import new_notification
from tests.test_broadcasts import add_subscribers

Cancel = Callable[[], Awaitable[None]]
R = TypeVar("R")


class CancelAfterRead:
    """A repository, except that a cancel commits right after the router has loaded its
    batch (or the fan-out has read its audience page): before either writes anything."""

    def __init__(self, repository: Any, cancel: Cancel) -> None:
        self._repository = repository
        self._cancel = cancel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repository, name)

    async def load(self, notification_ids: Sequence[str]) -> list[RoutingInput]:
        inputs = await self._repository.load(notification_ids)
        await self._cancel()
        return inputs

    async def audience_page(self, **page: Any) -> list[str]:
        users = await self._repository.audience_page(**page)
        await self._cancel()
        return users


def hooked(repository: R, cancel: Cancel) -> R:
    return cast(R, CancelAfterRead(repository, cancel))


async def send_whatever_is_left(runtime: Runtime, notification_ids: Sequence[str]) -> int:
    """Every channel's worker is handed every delivery of these notifications (as a late or
    replayed bus message would); returns how many it sent."""
    providers = runtime.build_providers()
    sent = 0
    for channel in Channel:
        worker = ChannelWorker(
            channel, runtime.storage.deliveries, runtime.bus, providers, runtime.clock
        )
        ids = [
            d.id
            for n in notification_ids
            for d in await runtime.storage.notifications.deliveries_of(n)
            if d.channel == channel
        ]
        sent += len(await worker.process(ids))
    return sent


async def nothing_went_out(runtime: Runtime, notification_ids: Sequence[str]) -> None:
    assert await send_whatever_is_left(runtime, notification_ids) == 0
    async with runtime.storage.database.reading() as db:
        inbox = await db.scalar(sa.select(sa.func.count()).select_from(t.inbox_items))
        sandbox = await db.scalar(sa.select(sa.func.count()).select_from(t.sandbox_messages))
    assert (inbox, sandbox) == (0, 0)
    for notification_id in notification_ids:
        states = {
            d.state for d in await runtime.storage.notifications.deliveries_of(notification_id)
        }
        assert states <= {DeliveryState.SKIPPED}, states


@pytest.mark.parametrize("when", ["before", "during", "after"])
async def test_a_cancelled_notification_sends_nothing_whenever_the_cancel_lands(
    api: httpx.AsyncClient, runtime: Runtime, when: str
) -> None:
    await api.put("/v1/users/u1", json={"email": "u1@example.com"})
    accepted = await api.post(
        "/v1/notifications",
        json={"user_id": "u1", "title": "x", "body": "y", "channels": ["email", "in_app"]},
    )
    notification_id = accepted.json()["id"]

    async def cancel() -> None:
        response = await api.post(f"/v1/notifications/{notification_id}/cancel")
        assert response.status_code == 200, response.text

    routing = runtime.storage.routing
    if when == "during":
        routing = hooked(routing, cancel)
    if when == "before":
        await cancel()
    await Router(routing, runtime.storage.broadcasts, runtime.bus, runtime.clock).route(
        [notification_id]
    )
    if when == "after":
        await cancel()
    await runtime.router().route([notification_id])  # a replayed bus message changes nothing
    await nothing_went_out(runtime, [notification_id])
    notification = await runtime.storage.notifications.get(notification_id)
    assert notification is not None
    expected = "routed" if when == "after" else "cancelled"
    assert notification.state.value == expected
    if when == "after":
        skipped = await runtime.storage.notifications.deliveries_of(notification_id)
        assert {d.last_error for d in skipped} == {"cancelled"}
        assert len(skipped) == 2


@pytest.mark.parametrize("when", ["before", "during fan-out", "during routing", "after routing"])
async def test_a_cancelled_broadcast_sends_nothing_whenever_the_cancel_lands(
    api: httpx.AsyncClient, runtime: Runtime, when: str
) -> None:
    users = await add_subscribers(runtime, "news", 30)
    body = {"topic": "news", "notification": {"title": "x", "channels": ["in_app"]}}
    created = await api.post("/v1/broadcasts", json=body, headers={"Idempotency-Key": "c1"})
    broadcast_id = created.json()["id"]

    async def cancel() -> None:
        response = await api.post(f"/v1/broadcasts/{broadcast_id}/cancel")
        assert response.status_code == 200, response.text

    async def recipients() -> list[str]:
        async with runtime.storage.database.reading() as db:
            rows = await db.execute(
                sa.select(t.notifications.c.id).where(
                    t.notifications.c.broadcast_id == broadcast_id
                )
            )
        return [row.id for row in rows]

    broadcasts, routing = runtime.storage.broadcasts, runtime.storage.routing
    if when == "during fan-out":
        broadcasts = hooked(broadcasts, cancel)
    if when == "during routing":
        routing = hooked(routing, cancel)
    if when == "before":
        await cancel()
    written = await BroadcastFanout(broadcasts, runtime.bus, page_size=20).fan_out_page(
        broadcast_id, None
    )
    assert written == (20 if when.endswith("routing") else 0)
    await Router(routing, runtime.storage.broadcasts, runtime.bus, runtime.clock).route(
        await recipients()
    )
    if when == "after routing":
        await cancel()
    # Whatever still arrives afterwards: the next page's message, the router's replays.
    fanout = BroadcastFanout(runtime.storage.broadcasts, runtime.bus, page_size=20)
    assert await fanout.fan_out_page(broadcast_id, users[19]) == 0
    await runtime.router().route(await recipients())
    await nothing_went_out(runtime, await recipients())
    progress = await runtime.storage.broadcasts.broadcast_progress(broadcast_id)
    assert progress["recipients_created"] == written
    assert progress["routed"] == (20 if when == "after routing" else 0)
    assert (await runtime.storage.broadcasts.get_broadcast(broadcast_id) or {})[
        "state"
    ] == "cancelled"


@pytest.mark.production
@pytest.mark.postgres
async def test_on_postgresql_a_router_waiting_on_a_cancels_lock_routes_nothing(
    postgres_storage: Storage, postgres_test_url: str
) -> None:
    """The cancel's transaction still open while the router writes: the router's update
    waits for it, then finds the notification cancelled (separate connections)."""
    await postgres_storage.directory.upsert_user(User("u1", email="u1@example.com"))
    item = new_notification("race", "u1")
    await postgres_storage.notifications.accept([item])
    cancelling = await asyncpg.connect(postgres_test_url)
    try:
        transaction = cancelling.transaction()
        await transaction.start()
        await cancelling.execute(
            "UPDATE notifications SET state = 'cancelled' WHERE id = $1 AND state = 'accepted'",
            item.notification.id,
        )
        router = Router(
            postgres_storage.routing, postgres_storage.broadcasts, MemoryBus(), SYSTEM_CLOCK
        )
        routing = asyncio.create_task(router.route([item.notification.id]))

        await eventually(lambda: waits_for_a_lock(cancelling))
        await transaction.commit()
        await asyncio.wait_for(routing, 30)
    finally:
        await cancelling.close()
    assert await postgres_storage.notifications.deliveries_of(item.notification.id) == []
    notification = await postgres_storage.notifications.get(item.notification.id)
    assert notification is not None
    assert notification.state == NotificationState.CANCELLED


@pytest.mark.production
@pytest.mark.postgres
async def test_on_postgresql_a_cancel_waiting_on_a_routers_lock_skips_what_it_wrote(
    postgres_storage: Storage, postgres_test_url: str
) -> None:
    """The router's write still open while the cancel runs: the router writes no row of the
    notification, but its lock (FOR SHARE) makes the cancel wait, and the cancel then
    skips the deliveries that committed meanwhile (separate connections; the router's
    statement is split in two here, so that its transaction can be held open)."""
    await postgres_storage.directory.upsert_user(User("u1", email="u1@example.com"))
    item = new_notification("race", "u1")
    await postgres_storage.notifications.accept([item])
    ids = [item.notification.id]
    async with routing_held_open(postgres_storage, postgres_test_url, ids) as (router, written):
        cancel = asyncio.create_task(postgres_storage.notifications.cancel(ids))
        await eventually(lambda: waits_for_a_lock(router))
        await router.execute("COMMIT")
        cancelled = await asyncio.wait_for(cancel, 30)
    assert cancelled == sum(d.state != DeliveryState.SKIPPED for d in written) > 0
    deliveries = await postgres_storage.notifications.deliveries_of(item.notification.id)
    assert {d.state for d in deliveries} == {DeliveryState.SKIPPED}
    notification = await postgres_storage.notifications.get(item.notification.id)
    assert notification is not None
    assert notification.state == NotificationState.CANCELLED
