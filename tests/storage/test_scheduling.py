"""The scheduler's sweep for notifications whose bus message was lost: it republishes the
published ones still not routed once they are old enough, and reads each lane from a
position that moves over the settled ones (migration 0018), not every notification."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from herald.domain import Priority, User
from herald.router.planner import RoutingPlan, plan_routing
from herald.storage import Storage
from herald.storage import schema as t
from herald.storage.schema import BULK_LANE_ORDER, URGENT_LANE_ORDER
from tests.storage.test_outbox import accept, relayed


async def route(storage: Storage, *notification_ids: str) -> None:
    now = storage.database.clock.now()
    whole = RoutingPlan()
    for routing in await storage.routing.load(notification_ids):
        whole.extend(plan_routing(routing, now))
    assert whole.deliveries
    await storage.routing.save(notification_ids, whole.deliveries, whole.folds, whole.claims)


async def swept(storage: Storage, *, older_than_seconds: float = -1) -> list[str]:
    """The ids one sweep republishes (by default every unrouted one: the cutoff is ahead)."""
    cutoff = storage.database.clock.now() - timedelta(seconds=older_than_seconds)
    return [i for i, _, _ in await storage.scheduling.stale_notifications(cutoff, 100)]


async def relay_order(storage: Storage, notification_id: str) -> tuple[int, int]:
    n = t.notifications.c
    return await _pair(storage, sa.select(n.relay_xid, n.relay_seq).where(n.id == notification_id))


async def sweep_position(storage: Storage, lane: int = BULK_LANE_ORDER) -> tuple[int, int]:
    s = t.sweep_positions.c
    return await _pair(storage, sa.select(s.position_xid, s.position_seq).where(s.lane == lane))


async def _pair(storage: Storage, query: sa.Select[Any]) -> tuple[int, int]:
    async with storage.database.reading() as db:
        row = (await db.execute(query)).one()
    return int(row[0]), int(row[1])


async def with_user(storage: Storage) -> Storage:
    await storage.directory.upsert_user(User("u", email="u@example.com"))
    return storage


async def publish(storage: Storage, keys: Sequence[str]) -> list[str]:
    await accept(storage, *keys)
    ids = [f"n-{k}" for k in keys]
    assert await relayed(storage) == ids
    return ids


async def test_only_a_published_notification_still_not_routed_is_republished_once_old(
    storage: Storage,
) -> None:
    await with_user(storage)
    routed, cancelled, lost = await publish(storage, ["routed", "cancelled", "lost"])
    await route(storage, routed)
    await storage.notifications.cancel([cancelled])
    await accept(storage, "unpublished")  # the relay's to publish, not the sweep's
    assert await swept(storage, older_than_seconds=3600) == []  # none is old enough
    assert await swept(storage) == [lost]
    await route(storage, lost)
    assert await swept(storage) == []


async def test_the_position_moves_over_settled_notifications_up_to_the_first_unrouted_one(
    storage: Storage,
) -> None:
    await with_user(storage)
    first, second, lost, last = await publish(storage, ["a", "b", "c", "d"])
    await route(storage, first, second, last)
    start = await sweep_position(storage)
    assert await swept(storage) == [lost]  # found past the position, which it holds up
    assert start < await sweep_position(storage) == await relay_order(storage, second)
    assert await swept(storage) == [lost]  # the next sweep reads from there, and finds it
    await route(storage, lost)
    assert await swept(storage) == []
    assert await sweep_position(storage) == await relay_order(storage, last)


async def test_a_young_notification_holds_the_position_without_being_republished(
    storage: Storage,
) -> None:
    """The router may be routing it right now: it is not lost yet, but the sweep cannot
    pass it either, or a loss found later would lie behind the position."""
    await with_user(storage)
    young, routed = await publish(storage, ["young", "routed"])
    await route(storage, routed)
    start = await sweep_position(storage)
    assert await swept(storage, older_than_seconds=3600) == []
    assert await sweep_position(storage) == start
    assert await swept(storage) == [young]


async def test_each_lane_keeps_its_own_position(storage: Storage) -> None:
    await with_user(storage)
    await accept(storage, "otp", priority=Priority.HIGH)
    await accept(storage, "bulk")
    assert await relayed(storage) == ["n-otp", "n-bulk"]  # urgent first
    await route(storage, "n-bulk")
    assert await swept(storage) == ["n-otp"]
    assert await sweep_position(storage) == await relay_order(storage, "n-bulk")
    assert await sweep_position(storage, URGENT_LANE_ORDER) < await relay_order(storage, "n-otp")
