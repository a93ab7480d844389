"""The router's repository on the driver: its load (everything a batch needs, in one
statement, as the table-by-table reads returned it) and its save (what it writes, once: in
one statement, or in one transaction with the shaping statements that run inside it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from herald.config import Settings
from herald.domain import (
    AddressKind,
    CategorySettings,
    Channel,
    DeliveryPolicy,
    DeliveryState,
    FrequencyCap,
    NotificationState,
    Platform,
    User,
    state_told,
)
from herald.router.planner import RoutingPlan, plan_routing
from herald.runtime import Runtime
from herald.storage import Released, RoutingInput, Storage, open_storage
from herald.storage import schema as t
from herald.storage.rows import (
    category_from_json,
    preferences_from_json,
    to_channel_address,
    to_device,
    to_notification,
    to_user,
)
from herald.storage.shaping import caps_by_channel
from herald.storage.statements import told_state
from tests.api.test_admin import TEMPLATE
from tests.fixtures.activity import (
    counting_driver_statements,
    counting_round_trips,
    counting_statements,
    routing_held_open,
    waits_for_a_lock,
)
from tests.fixtures.herald import eventually
from tests.router.test_poison import new_notification


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


async def test_a_save_that_nothing_shapes_is_one_round_trip(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """The mark, the deliveries, their first events and the read for the publish: one
    statement on PostgreSQL, one hop to SQLite's thread (Native.route). A regression to a
    transaction of a statement each (six round trips) fails here."""
    await api.put("/v1/users/u", json={"email": "u@example.com"})
    later = (runtime.clock.now() + timedelta(hours=1)).isoformat()
    ids = await accept(
        api, {"channels": ["email", "in_app"]}, {"channels": ["in_app"], "send_at": later}
    )
    whole = await plan(runtime, ids)
    database = runtime.storage.database
    with (
        counting_statements(database) as through_sqlalchemy,
        counting_round_trips(database) as round_trips,
    ):
        released = await save(runtime, ids, whole)
    assert through_sqlalchemy == []
    assert len(round_trips) == 1, round_trips
    assert sorted(r.channel for r in released) == ["email", "in_app"]
    [event] = await runtime.storage.notifications.events_of(ids[1])
    assert event.state == DeliveryState.DEFERRED


@pytest.mark.production
@pytest.mark.postgres
async def test_on_postgresql_a_save_that_waited_for_another_routers_insert_returns_its_deliveries(
    postgres_storage: Storage, postgres_test_url: str
) -> None:
    """Two routers on one batch (a message handed out twice around a rebalance): both find
    the notification still to route (their locks are shared), and the second one's insert
    of the same ids waits for the first one's. It must still return what the first one
    wrote, which committed after its statement began: the first one may die before its
    publish (separate connections; the first router's statement is split in two here, so
    that its transaction can be held open)."""
    await postgres_storage.directory.upsert_user(User("u1", email="u1@example.com"))
    item = new_notification("twice", "u1")
    await postgres_storage.notifications.accept([item])
    ids = [item.notification.id]
    async with routing_held_open(postgres_storage, postgres_test_url, ids) as (first, written):
        second = asyncio.create_task(postgres_storage.routing.save(ids, written))
        await eventually(lambda: waits_for_a_lock(first))
        await first.execute("COMMIT")
        released = await asyncio.wait_for(second, 30)
    queued = sorted(d.id for d in written if d.state == DeliveryState.QUEUED)
    assert queued
    assert sorted(r.delivery_id for r in released) == queued
    assert len(await postgres_storage.notifications.deliveries_of(ids[0])) == len(written)


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


async def loaded_table_by_table(
    storage: Storage, notification_ids: list[str]
) -> list[RoutingInput]:
    """The batch as the router read it before ROUTING_LOAD_SQL: one SQLAlchemy read per
    table, mapped by rows.py (the reference the one statement must match)."""
    async with storage.database.reading() as db:

        async def rows(query: sa.Select[Any]) -> list[Any]:
            return list(await db.execute(query))

        n, u = t.notifications.c, t.users.c
        notifications = [
            to_notification(r)
            for r in await rows(
                sa.select(t.notifications)
                .where(n.id.in_(notification_ids), n.state == "accepted")
                .order_by(n.created_at, n.id)
            )
        ]
        user_ids = {x.user_id for x in notifications}
        users = {r.id: r for r in await rows(sa.select(t.users).where(u.id.in_(user_ids)))}
        devices = await rows(
            sa.select(t.devices)
            .where(t.devices.c.user_id.in_(user_ids), t.devices.c.active)
            .order_by(t.devices.c.created_at, t.devices.c.id)
        )
        addresses = await rows(
            sa.select(t.channel_addresses)
            .where(t.channel_addresses.c.user_id.in_(user_ids), t.channel_addresses.c.active)
            .order_by(t.channel_addresses.c.kind)
        )
        emails_and_phones = [a for r in users.values() for a in (r.email, r.phone) if a]
        suppressed = {
            (r.channel, r.address)
            for r in await rows(
                sa.select(t.suppressions).where(t.suppressions.c.address.in_(emails_and_phones))
            )
        }
        categories = {
            r.name: category_from_json(r.name, r.definition)
            for r in await rows(sa.select(t.categories))
        }
        templates = {r.name: r.definition for r in await rows(sa.select(t.templates))}
        caps = caps_by_channel(await rows(sa.select(t.frequency_caps)))
    return [
        RoutingInput(
            notification=x,
            user=to_user(users[x.user_id]) if x.user_id in users else None,
            preferences=preferences_from_json(
                users[x.user_id].preferences if x.user_id in users else None
            ),
            devices=[to_device(r) for r in devices if r.user_id == x.user_id],
            category=categories.get(x.category) or CategorySettings(x.category),
            template=templates.get(x.template) if x.template else None,
            suppressed=suppressed,
            channel_caps=caps,
            addresses=[to_channel_address(r) for r in addresses if r.user_id == x.user_id],
        )
        for x in notifications
    ]


@pytest.fixture
async def mixed_batch(api: httpx.AsyncClient, runtime: Runtime) -> list[str]:
    """A batch that needs every table the router reads: a user with devices (one of them
    gone), addresses (one deactivated), a suppressed email and preferences; one with only a
    phone; one whose row was never written; a category with a definition, a template, one
    named template deleted since, frequency caps; and a notification cancelled
    before the batch is read."""
    storage = runtime.storage
    for method, path, body in [
        ("PUT", "/v1/users/ada", {"email": "ada@example.com", "locale": "de-AT"}),
        ("PUT", "/v1/users/ada/preferences", {"channels": {"sms": False}}),
        ("PUT", "/v1/users/bob", {"phone": "+14155550100", "timezone": "Europe/Vienna"}),
        ("POST", "/v1/suppressions", {"channel": "email", "address": "ada@example.com"}),
        ("POST", "/v1/suppressions", {"channel": "sms", "address": "+14155550199"}),
        ("PUT", "/v1/templates/welcome", TEMPLATE),
        ("PUT", "/v1/templates/gone", TEMPLATE),
        (
            "PUT",
            "/v1/categories/news",
            {
                "channels": ["push", "email"],
                "policy": {"push": "at_most_once"},
                "caps": {"email": {"limit": 2, "window_seconds": 3600}},
            },
        ),
        ("PUT", "/v1/frequency-caps/push", {"limit": 5, "window_seconds": 60}),
    ]:
        response = await api.request(method, path, json=body)
        assert response.is_success, response.text
    directory = storage.directory
    await directory.register_device("ada", Platform.IOS, "ab" * 32)
    gone, _ = await directory.register_device("ada", Platform.ANDROID, "token-gone")
    await directory.register_device(
        "ada",
        Platform.WEB,
        "https://push.example.com/1",
        {"endpoint": "https://push.example.com/1", "keys": {"p256dh": "k", "auth": "a"}},
    )
    await storage.addresses.put("ada", AddressKind.WEBHOOK, "https://hooks.example.com/a", {})
    await storage.addresses.put("ada", AddressKind.SLACK, "C0123ABCD", {"team": "T1"})
    await storage.addresses.put("bob", AddressKind.DISCORD, "https://discord.example.com/b", {})
    async with storage.database.transaction() as db:
        await db.execute(t.devices.update().where(t.devices.c.id == gone.id).values(active=False))
        await db.execute(
            t.channel_addresses.update()
            .where(t.channel_addresses.c.user_id == "bob")
            .values(active=False)
        )
    ids = await accept(
        api,
        {"user_id": "ada", "category": "news", "template": "welcome", "variables": {"name": "A"}},
        {"user_id": "ada", "channels": ["in_app", "email"], "ttl_seconds": 600},
        {
            "user_id": "bob",
            "template": "gone",
            "variables": {"name": "B"},
            "deliver_at_local": "09:00",
        },
        {"user_id": "bob", "category": "news"},
    )
    assert (await api.post(f"/v1/notifications/{ids[-1]}/cancel")).status_code == 200
    assert (await api.delete("/v1/templates/gone")).status_code == 204
    [ghost] = await storage.notifications.accept(
        [new_notification("ghost", "nobody")], of_known_users=False
    )
    return [*ids, ghost.id]


async def test_the_load_returns_what_the_table_by_table_reads_return(
    runtime: Runtime, mixed_batch: list[str]
) -> None:
    loaded = await runtime.storage.routing.load(mixed_batch)
    assert loaded == await loaded_table_by_table(runtime.storage, mixed_batch)

    # What equality alone would let through: the rows of the right users, and their types.
    assert sorted((i.notification.user_id, i.user and i.user.id) for i in loaded) == [
        ("ada", "ada"),
        ("ada", "ada"),
        ("bob", "bob"),
        ("nobody", None),
    ]
    of = {i.notification.id: i for i in loaded}
    ada, bob, ghost = of[mixed_batch[0]], of[mixed_batch[2]], of[mixed_batch[4]]
    assert sorted(d.platform for d in ada.devices) == ["ios", "web"]
    assert all(d.active is True and d.created_at.tzinfo is UTC for d in ada.devices)
    [web] = [d for d in ada.devices if d.platform == Platform.WEB]
    assert web.subscription == {
        "endpoint": "https://push.example.com/1",
        "keys": {"p256dh": "k", "auth": "a"},
    }
    assert [(a.kind, a.config) for a in ada.addresses] == [
        (AddressKind.SLACK, {"team": "T1"}),
        (AddressKind.WEBHOOK, {}),
    ]
    assert bob.devices == []
    assert bob.addresses == []
    assert ada.suppressed == {("email", "ada@example.com")}
    assert ada.preferences.channels == {Channel.SMS: False}
    assert ada.category.policy == {Channel.PUSH: DeliveryPolicy.AT_MOST_ONCE}
    assert ada.category.caps == {Channel.EMAIL: FrequencyCap(2, 3600)}
    assert ada.template == await runtime.storage.directory.get_template("welcome")
    assert ada.template is not None
    assert ada.template["default_locale"] == "en"
    assert bob.template is None
    assert bob.notification.deliver_at_local == "09:00"
    assert ghost.user is None
    assert ghost.category == CategorySettings("default")
    assert ada.channel_caps == {Channel.PUSH: FrequencyCap(5, 60)}
    assert ada.user is not None
    assert ada.user.updated_at.tzinfo is UTC
    assert ada.notification.created_at.tzinfo is UTC


async def test_the_load_is_one_statement_on_the_driver(
    runtime: Runtime, mixed_batch: list[str]
) -> None:
    """A regression to one statement per table (eight round trips) fails here."""
    with (
        counting_statements(runtime.storage.database) as through_sqlalchemy,
        counting_driver_statements(runtime.storage.database) as on_the_driver,
    ):
        assert len(await runtime.storage.routing.load(mixed_batch)) == 4
        assert await runtime.storage.routing.load(["n-none"]) == []
    assert through_sqlalchemy == []
    assert len(on_the_driver) == 2


async def test_a_changed_category_template_or_cap_is_seen_by_the_next_load(
    api: httpx.AsyncClient, runtime: Runtime, settings_factory: Callable[..., Settings]
) -> None:
    """Nothing is cached: what another process changed is what the next batch reads."""
    await api.put("/v1/users/ada", json={"email": "ada@example.com"})
    await api.put("/v1/templates/welcome", json=TEMPLATE)
    await api.put("/v1/categories/news", json={"channels": ["email"]})
    ids = await accept(
        api,
        {"user_id": "ada", "category": "news", "template": "welcome", "variables": {"name": "A"}},
    )
    [before] = await runtime.storage.routing.load(ids)
    assert (before.category.channels, before.channel_caps) == ((Channel.EMAIL,), {})

    other = open_storage(settings_factory().effective_database_url)
    try:
        await other.directory.put_category("news", {"channels": ["in_app"]})
        changed = TEMPLATE | {"default_locale": "de"}
        await other.directory.put_template("welcome", changed)
        await other.shaping.put_frequency_cap(Channel.EMAIL, FrequencyCap(3, 60))
    finally:
        await other.database.close()
    [after] = await runtime.storage.routing.load(ids)
    assert after.category.channels == (Channel.IN_APP,)
    assert after.template is not None
    assert after.template["default_locale"] == "de"
    assert after.channel_caps == {Channel.EMAIL: FrequencyCap(3, 60)}


async def test_routing_leaves_the_row_accepted_and_reads_routed_unless_it_planned_nothing(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """A notification's deliveries say it was routed: its row gets no mark (migration
    0018). One planned no delivery (a channel the user has no address on) is marked."""
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    given, nothing = await accept(api, {"channels": ["in_app"]}, {"channels": ["webhook"]})
    await save(runtime, [given, nothing], await plan(runtime, [given, nothing]))
    n = t.notifications.c
    async with runtime.storage.database.reading() as db:
        rows = await db.execute(
            sa.select(n.id, n.state, n.routed_at).where(n.id.in_([given, nothing]))
        )
        stored = {row.id: (row.state, row.routed_at is not None) for row in rows}
    assert stored == {given: ("accepted", False), nothing: ("routed", True)}
    for notification_id in (given, nothing):
        notification = await runtime.storage.notifications.get(notification_id)
        assert notification is not None
        assert notification.state == NotificationState.ROUTED
    page = await api.get("/v1/notifications", params={"user_id": "u"})
    assert {item["status"] for item in page.json()["items"]} == {"routed"}


async def test_a_notification_handed_out_again_after_its_plan_changed_gets_no_new_delivery(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Routed once: a rerun (a redelivered message) after the user gained an address
    writes nothing, although its plan now has a delivery the first one did not."""
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    [notification_id] = await accept(api, {"channels": ["in_app", "webhook"]})
    await save(runtime, [notification_id], await plan(runtime, [notification_id]))
    url = "https://hooks.example.com/u"
    assert (await api.put("/v1/users/u/channels/webhook", json={"url": url})).status_code == 201
    again = await plan(runtime, [notification_id])
    assert {d.channel for d in again.deliveries} == {Channel.IN_APP, Channel.WEBHOOK}
    await save(runtime, [notification_id], again)
    deliveries = await runtime.storage.notifications.deliveries_of(notification_id)
    assert [d.channel for d in deliveries] == [Channel.IN_APP]


@pytest.mark.parametrize("has_deliveries", [False, True], ids=["no deliveries", "deliveries"])
@pytest.mark.parametrize("stored", list(NotificationState))
async def test_the_state_clients_read_in_sql_is_the_domains_rule(
    api: httpx.AsyncClient, runtime: Runtime, stored: NotificationState, has_deliveries: bool
) -> None:
    """statements.told_state (broadcast progress, the sweep) and the repository's read
    against domain.state_told."""
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    [notification_id] = await accept(api, {"channels": ["in_app"]})
    if has_deliveries:
        await save(runtime, [notification_id], await plan(runtime, [notification_id]))
    storage = runtime.storage
    n = t.notifications.c
    async with storage.database.transaction() as db:
        await db.execute(t.notifications.update().values(state=stored.value))
    async with storage.database.reading() as db:
        told = await db.scalar(sa.select(told_state()).where(n.id == notification_id))
    assert told == state_told(stored, has_deliveries).value
    notification = await storage.notifications.get(notification_id)
    assert notification is not None
    assert notification.state == state_told(stored, has_deliveries)
