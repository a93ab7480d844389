"""Digests and frequency caps under concurrency: routers in separate connections (separate
engines, as separate processes would be) racing on one digest window, on one cap, and on a
window that closes while they fold into it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from herald.bus.interface import Bus
from herald.clock import Clock, FakeClock
from herald.domain import Channel, DeliveryState
from herald.router.router import Router
from herald.runtime import Runtime
from herald.storage import Storage, open_storage
from herald.storage import schema as t

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def peers(runtime: Runtime) -> AsyncIterator[Callable[[Clock], Storage]]:
    """Open more stores on the test's database, each with its own engine and clock."""
    opened: list[Storage] = []

    def open_peer(peer_clock: Clock) -> Storage:
        storage = open_storage(runtime.settings.effective_database_url, peer_clock)
        opened.append(storage)
        return storage

    yield open_peer
    for storage in opened:
        await storage.database.close()


async def accept(api: httpx.AsyncClient, users: list[str], prefix: str, **fields: Any) -> list[str]:
    items = [
        {"idempotency_key": f"{prefix}-{user}-{n}", "user_id": user, "title": f"{prefix} {n}"}
        | {"category": "news", "channels": ["in_app"]}
        | fields
        for n, user in enumerate(users)
    ]
    accepted = await api.post("/v1/notifications/batch", json={"notifications": items})
    assert accepted.json()["accepted"] == len(items), accepted.text
    return [item["id"] for item in accepted.json()["items"]]


async def add_users(api: httpx.AsyncClient, count: int) -> list[str]:
    for n in range(count):
        await api.put(f"/v1/users/u{n}", json={"timezone": "UTC"})
    return [f"u{n}" for n in range(count)]


async def rows(runtime: Runtime, query: sa.Select[Any]) -> list[Any]:
    async with runtime.storage.database.engine.connect() as db:
        return list(await db.execute(query))


async def delivery_states(runtime: Runtime, ids: list[str]) -> list[tuple[str, str, Any]]:
    d = t.deliveries.c
    found = await rows(
        runtime,
        sa.select(d.notification_id, d.state, d.last_error, d.due_at).where(
            d.notification_id.in_(ids)
        ),
    )
    return [(r.state, r.last_error or "", r.due_at) for r in found]


async def test_racing_routers_fold_a_window_into_one_digest_and_lose_nothing(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, peers: Callable[[Clock], Storage]
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.put("/v1/categories/news", json={"digest": {"in_app": {"window_seconds": 3600}}})
    routers = [router_on(peers(clock), runtime.bus, clock) for _ in range(3)]
    spread = await accept(api, ["u"] * 60, "spread")
    # different notifications of one window, interleaved over three routers
    await asyncio.gather(*(r.route(spread[i::3]) for i, r in enumerate(routers)))
    # the same notifications handed to every router at once (redelivered messages)
    twice = await accept(api, ["u"] * 30, "twice")
    await asyncio.gather(*(r.route(twice) for r in routers))

    [digest] = await runtime.storage.shaping.list_digests("u")
    assert (digest["state"], digest["item_count"]) == ("open", 90)
    assert (digest["window_start"], digest["window_end"]) == (START, START + HOUR)
    items = await rows(runtime, sa.select(t.digest_items))
    assert sorted(i.notification_id for i in items) == sorted(spread + twice)
    states = await delivery_states(runtime, spread + twice)
    assert Counter((s, reason) for s, reason, _ in states) == {
        ("digested", f"folded into digest {digest['id']}"): 90
    }

    clock.advance(3600)
    closers = [peers(clock) for _ in range(3)]
    assert sum(await asyncio.gather(*(c.scheduling.close_due_digests() for c in closers))) == 1
    [closed] = await runtime.storage.shaping.list_digests("u")
    assert closed["state"] == "closed"
    made = await runtime.storage.notifications.get(closed["notification_id"])
    assert made is not None
    assert made.digest_id == digest["id"]
    assert made.variables["digest"]["count"] == 90
    assert len(made.variables["digest"]["notifications"]) == 50
    assert (made.title, made.channels) == ("90 new notifications", (Channel.IN_APP,))
    await runtime.router().route([made.id])
    assert [
        (d.channel, d.state) for d in await runtime.storage.notifications.deliveries_of(made.id)
    ] == [(Channel.IN_APP, DeliveryState.QUEUED)]


@pytest.mark.parametrize("over_cap", ["defer", "digest"])
async def test_racing_routers_never_exceed_a_cap(
    api: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    peers: Callable[[Clock], Storage],
    over_cap: str,
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    cap = await api.put("/v1/frequency-caps/in_app", json={"limit": 3, "window_seconds": 3600})
    assert cap.status_code == 201
    if over_cap == "digest":
        overflow = {"in_app": {"window_seconds": 3600, "when": "over_cap"}}
        await api.put("/v1/categories/news", json={"digest": overflow})
    routers = [router_on(peers(clock), runtime.bus, clock) for _ in range(3)]
    ids = await accept(api, ["u"] * 30, "capped")
    await asyncio.gather(*(r.route(ids[i::3]) for i, r in enumerate(routers)))
    await asyncio.gather(*(r.route(ids[:9]) for r in routers))  # replays count nothing

    states = await delivery_states(runtime, ids)
    assert Counter(s for s, _, _ in states)["queued"] == 3
    usage = await runtime.storage.shaping.cap_usage("u", Channel.IN_APP)
    if over_cap == "defer":
        due = Counter(d for s, _, d in states if s == "deferred")
        assert due == {START + HOUR * k: 3 for k in range(1, 10)}
        assert usage == [(START + HOUR * k, 3) for k in range(10)]
    else:
        assert Counter(s for s, _, _ in states)["digested"] == 27
        [digest] = await runtime.storage.shaping.list_digests("u")
        assert digest["item_count"] == 27
        assert usage == [(START, 3)]


async def test_critical_is_never_capped_nor_counted(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.put("/v1/frequency-caps/in_app", json={"limit": 1, "window_seconds": 3600})
    ids = await accept(api, ["u"] * 5, "otp", priority="critical")
    await runtime.router().route(ids)
    assert {s for s, _, _ in await delivery_states(runtime, ids)} == {"queued"}
    assert await runtime.storage.shaping.cap_usage("u", Channel.IN_APP) == []


async def test_a_window_closing_while_routers_fold_loses_no_item_and_doubles_none(
    api: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    peers: Callable[[Clock], Storage],
) -> None:
    """Routers still see the window as current while a scheduler, a second later, closes
    it: each item lands in the closed digest before its close, or in the next window."""
    users = await add_users(api, 40)
    await api.put("/v1/categories/news", json={"digest": {"in_app": {"window_seconds": 3600}}})
    clock.advance(3600 - 1)
    late = FakeClock(START + HOUR + timedelta(seconds=1))
    routers = [router_on(peers(clock), runtime.bus, clock) for _ in range(2)]
    closer = peers(late)
    accepted: list[str] = []
    for round_ in range(4):
        ids = await accept(api, users, f"r{round_}")
        accepted += ids
        await asyncio.gather(
            *(r.route(ids[i::2]) for i, r in enumerate(routers)),
            closer.scheduling.close_due_digests(limit=7),
            closer.scheduling.close_due_digests(limit=7),
        )
    late.advance(2 * 3600)
    while await closer.scheduling.close_due_digests():
        pass

    digests = {r.id: r for r in await rows(runtime, sa.select(t.digests))}
    items = await rows(runtime, sa.select(t.digest_items))
    assert sorted(i.notification_id for i in items) == sorted(accepted)  # each once
    per_digest = Counter(i.digest_id for i in items)
    for digest in digests.values():
        assert digest.state == "closed"
        made = await runtime.storage.notifications.get(digest.notification_id)
        assert made is not None
        # nothing was folded into a window after it closed
        assert made.variables["digest"]["count"] == per_digest[digest.id] == digest.item_count
    reasons = {i.notification_id: f"folded into digest {i.digest_id}" for i in items}
    d = t.deliveries.c
    folded = await rows(
        runtime, sa.select(d.notification_id, d.last_error).where(d.notification_id.in_(accepted))
    )
    assert {r.notification_id: r.last_error for r in folded} == reasons
    assert {(r.window_start, r.window_end) for r in digests.values()} <= {
        (START, START + HOUR),
        (START + HOUR, START + 2 * HOUR),
    }


async def test_cancelling_takes_a_notification_out_of_an_open_digest_only(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.put("/v1/categories/news", json={"digest": {"in_app": {"window_seconds": 3600}}})
    first = await accept(api, ["u"] * 3, "first")
    await runtime.router().route(first)
    cancelled = await api.post(f"/v1/notifications/{first[0]}/cancel")
    assert cancelled.json()["deliveries_cancelled"] == 1
    assert await delivery_states(runtime, first[:1]) == [("skipped", "cancelled", None)]

    clock.advance(3600)
    assert await runtime.storage.scheduling.close_due_digests() == 1
    [closed] = await runtime.storage.shaping.list_digests("u")
    made = await runtime.storage.notifications.get(closed["notification_id"])
    assert made is not None
    titles = [n["title"] for n in made.variables["digest"]["notifications"]]
    assert (closed["item_count"], sorted(titles)) == (2, ["first 1", "first 2"])
    late = await api.post(f"/v1/notifications/{first[1]}/cancel")  # already gone out
    assert late.status_code == 409
    assert "digested" in late.json()["error"]["message"]

    alone = await accept(api, ["u"], "alone")
    await runtime.router().route(alone)
    await api.post(f"/v1/notifications/{alone[0]}/cancel")
    clock.advance(3600)
    assert await runtime.storage.scheduling.close_due_digests() == 1
    emptied = [
        d for d in await runtime.storage.shaping.list_digests("u") if d["id"] != closed["id"]
    ]
    assert [(d["state"], d["item_count"], d["notification_id"]) for d in emptied] == [
        ("closed", 0, None)  # nothing left in it: no digest goes out
    ]


async def test_a_capped_notification_is_not_deferred_into_quiet_hours(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    quiet = {"start": "22:00", "end": "07:00"}
    await api.put("/v1/users/u", json={"timezone": "Europe/Berlin"})  # UTC+2 in June
    await api.put("/v1/users/u/preferences", json={"quiet_hours": quiet})
    await api.put("/v1/frequency-caps/in_app", json={"limit": 1, "window_seconds": 3600})
    clock.advance(7 * 3600 + 30 * 60)  # 19:30 UTC, 21:30 in Berlin
    ids = await accept(api, ["u"] * 2, "evening")
    await runtime.router().route(ids)
    next_morning = datetime(2026, 6, 2, 5, 0, tzinfo=UTC)  # 07:00 in Berlin
    assert sorted(await delivery_states(runtime, ids), key=str) == [
        ("deferred", "frequency cap", next_morning),
        ("queued", "", None),
    ]


def router_on(storage: Storage, bus: Bus, clock: Clock) -> Router:
    """A router of its own process: its own storage (connections) and clock."""
    return Router(storage.routing, storage.broadcasts, bus, clock)
