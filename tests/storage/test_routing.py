"""The router's save (RoutingRepository.save), on the driver: what it writes, once, in one
transaction with the shaping statements that run inside it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from herald.domain import DeliveryState, NotificationState
from herald.router.planner import RoutingPlan, plan_routing
from herald.runtime import Runtime
from herald.storage import Released
from herald.storage import schema as t


async def accept(api: httpx.AsyncClient, *bodies: dict[str, Any]) -> list[str]:
    items = [
        {"idempotency_key": f"k{n}", "user_id": "u", "title": "x"} | b for n, b in enumerate(bodies)
    ]
    accepted = await api.post("/v1/notifications/batch", json={"notifications": items})
    assert accepted.json()["accepted"] == len(items), accepted.text
    return [item["id"] for item in accepted.json()["items"]]


async def plan(runtime: Runtime, notification_ids: Sequence[str]) -> RoutingPlan:
    whole = RoutingPlan()
    for routing in await runtime.storage.routing.load(notification_ids):
        whole.extend(plan_routing(routing, runtime.clock.now()))
    return whole


async def save(
    runtime: Runtime, notification_ids: Sequence[str], whole: RoutingPlan
) -> list[Released]:
    return await runtime.storage.routing.save(
        notification_ids, whole.deliveries, whole.folds, whole.claims
    )


async def count(runtime: Runtime, table: sa.Table) -> int:
    async with runtime.storage.database.reading() as db:
        return int(await db.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def test_a_rerun_of_the_save_returns_the_queued_deliveries_and_writes_nothing_twice(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={"email": "u@example.com"})
    later = (runtime.clock.now() + timedelta(hours=1)).isoformat()
    ids = await accept(
        api,
        {"channels": ["email", "in_app"]},
        {"channels": ["in_app"], "send_at": later},  # deferred: its first event is written
    )
    whole = await plan(runtime, ids)
    first = await save(runtime, ids, whole)
    written = (await count(runtime, t.deliveries), await count(runtime, t.delivery_events))
    assert written == (3, 1)
    assert {(r.channel, r.user_id) for r in first} == {("email", "u"), ("in_app", "u")}

    # The process died after the commit and before the publish: the batch comes again.
    again = await save(runtime, ids, await plan(runtime, ids))
    assert sorted(again, key=lambda r: r.delivery_id) == sorted(first, key=lambda r: r.delivery_id)
    assert (await count(runtime, t.deliveries), await count(runtime, t.delivery_events)) == written
    # And with the first plan itself (the router's load found them routed already).
    assert len(await save(runtime, ids, whole)) == 2
    assert (await count(runtime, t.deliveries), await count(runtime, t.delivery_events)) == written
    states = {(await runtime.storage.notifications.get(i)).state for i in ids}  # type: ignore[union-attr]
    assert states == {NotificationState.ROUTED}


async def test_of_a_batch_only_the_notification_cancelled_after_the_load_gets_no_deliveries(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    kept, cancelled = await accept(api, {"channels": ["in_app"]}, {"channels": ["in_app"]})
    whole = await plan(runtime, [kept, cancelled])
    assert len(whole.deliveries) == 2
    assert (await api.post(f"/v1/notifications/{cancelled}/cancel")).status_code == 200

    released = await save(runtime, [kept, cancelled], whole)
    assert [r.delivery_id for r in released] == [
        d.id for d in whole.deliveries if d.notification_id == kept
    ]
    assert await runtime.storage.notifications.deliveries_of(cancelled) == []
    assert [d.state for d in await runtime.storage.notifications.deliveries_of(kept)] == [
        DeliveryState.QUEUED
    ]
    notification = await runtime.storage.notifications.get(cancelled)
    assert notification is not None
    assert notification.state == NotificationState.CANCELLED


class ShapingFails(Exception):
    pass


async def test_the_shaping_statements_commit_and_roll_back_with_the_save(
    api: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shaping runs on SQLAlchemy Core inside the driver's transaction: a save that fails
    after the digest fold leaves neither the fold nor the deliveries nor the routed mark."""
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.put("/v1/categories/news", json={"digest": {"in_app": {"window_seconds": 3600}}})
    ids = await accept(api, {"channels": ["in_app"], "category": "news"})
    whole = await plan(runtime, ids)
    assert whole.folds
    shaping = runtime.storage.routing.shaping
    fold = shaping.apply

    async def fold_then_fail(*args: Any) -> Any:
        await fold(*args)
        raise ShapingFails

    monkeypatch.setattr(shaping, "apply", fold_then_fail)
    with pytest.raises(ShapingFails):
        await save(runtime, ids, whole)
    assert [await count(runtime, table) for table in (t.deliveries, t.digests, t.digest_items)] == [
        0,
        0,
        0,
    ]
    notification = await runtime.storage.notifications.get(ids[0])
    assert notification is not None
    assert notification.state == NotificationState.ACCEPTED

    monkeypatch.setattr(shaping, "apply", fold)
    assert await save(runtime, ids, whole) == []  # folded into the digest: nothing queued
    [digest] = await runtime.storage.shaping.list_digests("u")
    assert digest["item_count"] == 1
    assert [d.state for d in await runtime.storage.notifications.deliveries_of(ids[0])] == [
        DeliveryState.DIGESTED
    ]
