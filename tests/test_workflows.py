"""Workflows through the running pipeline, on both backend sets, with a FakeClock the test
moves: the escalation "push; delay; email if the push was not opened" in both branches,
waits resumed and timed out, cancellation, idempotent triggers, quiet hours."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from herald.clock import FakeClock
from herald.router.fanout import BroadcastFanout
from herald.runtime import Runtime
from herald.storage import schema as t
from tests.fixtures.herald import Pipeline, eventually
from tests.test_broadcasts import add_subscribers

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ESCALATION = {
    "category": "orders",
    "steps": [
        {"id": "push", "type": "send", "channels": ["push"]},
        {"id": "pause", "type": "delay", "seconds": 3600},
        {
            "id": "email",
            "type": "send",
            "channels": ["email"],
            "if": {"step": "push", "not": ["opened"]},
        },
    ],
}
WAIT_FOR_PAYMENT = {
    "steps": [
        {"id": "wait", "type": "wait", "event": "paid", "timeout_seconds": 600},
        {"id": "thanks", "type": "send", "channels": ["in_app"], "if": {"event": "paid"}},
        {
            "id": "reminder",
            "type": "send",
            "channels": ["in_app"],
            "if": {"event": "paid", "received": False},
        },
    ]
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def user(api: httpx.AsyncClient, user_id: str = "u", **fields: Any) -> None:
    body = {"email": f"{user_id}@example.com", "timezone": "UTC", **fields}
    assert (await api.put(f"/v1/users/{user_id}", json=body)).status_code in (200, 201)
    device = {"platform": "ios", "token": hashlib.sha256(user_id.encode()).hexdigest()}
    assert (await api.post(f"/v1/users/{user_id}/devices", json=device)).status_code in (200, 201)


async def define(api: httpx.AsyncClient, key: str, definition: dict[str, Any]) -> None:
    response = await api.put(f"/v1/workflows/{key}", json=definition)
    assert response.status_code in (200, 201), response.text


async def trigger(
    api: httpx.AsyncClient, key: str, idempotency_key: str, **body: Any
) -> httpx.Response:
    body = {"user_id": "u", "title": "Order shipped", "body": "On its way", **body}
    return await api.post(
        f"/v1/workflows/{key}/trigger", json=body, headers={"Idempotency-Key": idempotency_key}
    )


async def run_of(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/workflow-runs/{run_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def step_statuses(run: dict[str, Any]) -> dict[str, str]:
    return {s["id"]: s["status"] for s in run["steps"]}


async def until_step(api: httpx.AsyncClient, run_id: str, step: str, status: str) -> Any:
    """(A list's runs exist once the fan-out has made their page: 404 until then.)"""

    async def check() -> dict[str, Any] | None:
        response = await api.get(f"/v1/workflow-runs/{run_id}")
        if response.status_code == 404:
            return None
        run = dict(response.json())
        return run if step_statuses(run)[step] == status else None

    return await eventually(check)


async def sent(api: httpx.AsyncClient, channel: str) -> list[dict[str, Any]]:
    items = (await api.get("/v1/sandbox/messages", params={"channel": channel})).json()["items"]
    return list(items)


async def delivered(api: httpx.AsyncClient, notification_id: str) -> list[dict[str, Any]] | None:
    body = (await api.get(f"/v1/notifications/{notification_id}")).json()
    done = {"sent", "delivered"}
    deliveries = body["deliveries"]
    return deliveries if deliveries and all(d["status"] in done for d in deliveries) else None


@pytest.mark.parametrize("opened", [True, False], ids=["opened", "not-opened"])
async def test_escalation_emails_only_when_the_push_was_not_opened(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock, opened: bool
) -> None:
    await user(api)
    await define(api, "shipped", ESCALATION)
    accepted = await trigger(api, "shipped", "order-1")
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]

    run = await until_step(api, run_id, "pause", "waiting")
    push_notification = next(s for s in run["steps"] if s["id"] == "push")["notification_id"]
    [push] = await eventually(lambda: delivered(api, push_notification))
    notification = (await api.get(f"/v1/notifications/{push_notification}")).json()
    assert (notification["workflow_run_id"], notification["workflow_step"]) == (run_id, "push")
    if opened:
        report = await api.post(f"/v1/deliveries/{push['id']}/engagement", json={"event": "opened"})
        assert report.json()["first"] is True

    clock.advance(3600)
    run = await eventually(lambda: _when(run_of(api, run_id), lambda r: r["status"] == "completed"))
    email_step = next(s for s in run["steps"] if s["id"] == "email")
    if opened:
        assert email_step["status"] == "skipped"
        assert email_step["notification_id"] is None
        assert await sent(api, "email") == []
    else:
        assert email_step["status"] == "done"
        await eventually(lambda: delivered(api, email_step["notification_id"]))
        [email] = await sent(api, "email")
        assert email["target"] == "u@example.com"
    assert len(await sent(api, "push")) == 1
    await pipeline.runtime.scheduler().tick()
    assert await pipeline.runtime.workflow_runner().tick() == 0  # nothing happens twice


async def _when(value: Any, check: Any) -> Any:
    got = await value
    return got if check(got) else None


@pytest.mark.parametrize("paid", [True, False], ids=["resumed", "timed-out"])
async def test_a_wait_resumes_on_its_event_or_times_out(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock, paid: bool
) -> None:
    await user(api)
    await define(api, "checkout", WAIT_FOR_PAYMENT)
    run_id = (await trigger(api, "checkout", "cart-1")).json()["id"]
    run = await until_step(api, run_id, "wait", "waiting")
    assert run["waiting_for"] == "paid"
    if paid:
        clock.advance(60)
        posted = await api.post("/v1/events", json={"user_id": "u", "name": "paid"})
        assert posted.status_code == 202
        assert posted.json()["resumed"] == 1
    else:
        clock.advance(600)
    run = await eventually(lambda: _when(run_of(api, run_id), lambda r: r["status"] == "completed"))
    expected = {"wait": "done", "thanks": "done", "reminder": "skipped"}
    if not paid:
        expected |= {"thanks": "skipped", "reminder": "done"}
    assert step_statuses(run) == expected
    wait = run["steps"][0]
    assert wait["detail"]["received"] is paid


async def test_an_event_for_another_name_or_user_resumes_nothing(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock
) -> None:
    await user(api)
    await user(api, "other")
    await define(api, "checkout", WAIT_FOR_PAYMENT)
    run_id = (await trigger(api, "checkout", "cart-1")).json()["id"]
    await until_step(api, run_id, "wait", "waiting")
    for event in ({"user_id": "u", "name": "refunded"}, {"user_id": "other", "name": "paid"}):
        assert (await api.post("/v1/events", json=event)).json()["resumed"] == 0
    await pipeline.runtime.workflow_runner().tick()
    assert (await run_of(api, run_id))["status"] == "running"


@pytest.mark.parametrize("when", ["before-the-first-step", "during-the-delay"])
async def test_a_cancelled_run_sends_nothing_more(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock, when: str
) -> None:
    await user(api)
    await define(api, "shipped", ESCALATION)
    if when == "before-the-first-step":
        pipeline.stop.set()  # no scheduler runs: the run is still at its first step
        await pipeline.close()
        pipeline.tasks = []
    run_id = (await trigger(api, "shipped", "order-1", cancellation_key="order-1")).json()["id"]
    if when == "during-the-delay":
        await until_step(api, run_id, "pause", "waiting")
    cancel = await api.post("/v1/workflow-runs/cancel", json={"cancellation_key": "order-1"})
    assert cancel.json() == {"cancelled": 1}
    again = await api.post("/v1/workflow-runs/cancel", json={"cancellation_key": "order-1"})
    assert again.json() == {"cancelled": 0}
    clock.advance(3600)
    assert await pipeline.runtime.workflow_runner().tick() == 0
    run = await run_of(api, run_id)
    assert run["status"] == "cancelled"
    statuses = step_statuses(run)
    assert statuses["email"] == "cancelled"
    assert statuses["push"] == ("cancelled" if when == "before-the-first-step" else "done")
    assert await sent(api, "email") == []


async def test_a_replayed_trigger_makes_no_second_run(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock
) -> None:
    await user(api)
    await user(api, "v")
    await define(api, "shipped", ESCALATION)
    first = await trigger(api, "shipped", "order-1", user_id=None, user_ids=["u", "v"])
    assert first.status_code == 202, first.text
    replay = await trigger(api, "shipped", "order-1", user_id=None, user_ids=["u", "v"])
    assert (replay.status_code, replay.json()["ids"]) == (200, first.json()["ids"])
    other = await trigger(api, "shipped", "order-1", user_id=None, user_ids=["u", "v"], title="x")
    assert other.status_code == 409
    for run_id in first.json()["ids"]:
        await until_step(api, run_id, "pause", "waiting")
    await eventually(lambda: _count(sent(api, "push"), 2))
    await pipeline.runtime.workflow_runner().tick()
    assert len(await sent(api, "push")) == 2


async def _count(items: Any, n: int) -> bool:
    return len(await items) == n


async def test_quiet_hours_defer_a_workflow_send_step(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock
) -> None:
    await user(api)
    quiet = {"quiet_hours": {"start": "11:00", "end": "13:00"}}
    assert (await api.put("/v1/users/u/preferences", json=quiet)).status_code == 200
    await define(api, "shipped", ESCALATION)
    run_id = (await trigger(api, "shipped", "order-1")).json()["id"]
    run = await until_step(api, run_id, "pause", "waiting")
    push_notification = run["steps"][0]["notification_id"]

    async def deferred() -> bool:
        body = (await api.get(f"/v1/notifications/{push_notification}")).json()
        return [d["status"] for d in body["deliveries"]] == ["deferred"]

    await eventually(deferred)
    assert await sent(api, "push") == []
    clock.advance(3600)  # 13:00: quiet hours over, and the delay is over too
    await eventually(lambda: delivered(api, push_notification))
    await eventually(lambda: _when(run_of(api, run_id), lambda r: r["status"] == "completed"))


NOTE = {"category": "news", "steps": [{"id": "note", "type": "send", "channels": ["in_app"]}]}


async def runs_of_trigger(runtime: Runtime, trigger_id: str) -> Counter[str]:
    """How many runs each user has from this topic trigger."""
    r = t.workflow_runs.c
    async with runtime.storage.database.engine.connect() as db:
        rows = await db.execute(
            sa.select(r.user_id).where(r.idempotency_key == f"trigger:{trigger_id}")
        )
        return Counter(row.user_id for row in rows)


async def test_a_topic_trigger_makes_one_run_per_subscriber_through_the_fan_out(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock
) -> None:
    users = await add_subscribers(pipeline.runtime, "news", 120)
    await define(api, "note", NOTE)
    body = {"topic": "news", "title": "Release 2.0"}
    headers = {"Idempotency-Key": "release-2"}
    created = await api.post("/v1/workflows/note/trigger", json=body, headers=headers)
    assert created.status_code == 202, created.text
    assert created.json()["planned"] == 120
    trigger_id = created.json()["trigger_id"]
    replay = await api.post("/v1/workflows/note/trigger", json=body, headers=headers)
    assert (replay.status_code, replay.json()["trigger_id"]) == (200, trigger_id)
    other = {**body, "title": "Release 3.0"}
    conflict = await api.post("/v1/workflows/note/trigger", json=other, headers=headers)
    assert conflict.status_code == 409

    async def every_user_has_its_item() -> Counter[str] | None:
        async with pipeline.runtime.storage.database.engine.connect() as db:
            rows = await db.execute(sa.select(t.inbox_items.c.user_id))
            per_user = Counter(row.user_id for row in rows)
        return per_user if len(per_user) == len(users) else None

    per_user = await eventually(every_user_has_its_item, timeout=120, interval=0.5)
    assert set(per_user) == set(users)
    assert set(per_user.values()) == {1}
    assert set((await runs_of_trigger(pipeline.runtime, trigger_id)).values()) == {1}
    assert (await api.get(f"/v1/broadcasts/{trigger_id}")).json()["state"] == "fanned_out"


@pytest.mark.parametrize("audience", ["topic", "user_ids"])
async def test_a_redelivered_page_of_a_fanned_out_trigger_adds_no_run(
    api: httpx.AsyncClient, runtime: Runtime, audience: str
) -> None:
    users = await add_subscribers(runtime, "news", 250)
    await define(api, "note", NOTE)
    body = {"topic": "news"} if audience == "topic" else {"user_ids": users[::-1]}
    created = await api.post("/v1/workflows/note/trigger", json=body)
    assert created.status_code == 202, created.text
    trigger_id = created.json()["trigger_id"]
    fanout = BroadcastFanout(
        runtime.storage.broadcasts, runtime.bus, page_size=100, workflows=runtime.storage.workflows
    )
    for after in (None, None, "s000099", "s000199", "s000099"):  # a replay, a late duplicate
        await fanout.fan_out_page(trigger_id, after)
    runs = await runs_of_trigger(runtime, trigger_id)
    assert set(runs) == set(users)
    assert set(runs.values()) == {1}
    assert await fanout.fan_out_page(trigger_id, "s000249") == 0
    if audience == "user_ids":  # the ids answered, in the list's order, are the runs made
        for run_id, user_id in zip(created.json()["ids"], users[::-1], strict=True):
            assert (await run_of(api, run_id))["user_id"] == user_id


@pytest.mark.parametrize(
    ("how", "pages_before"),
    [("broadcast", 1), ("cancellation_key", 1), ("cancellation_key", 0)],
)
async def test_a_cancelled_topic_trigger_fans_out_no_further(
    api: httpx.AsyncClient, runtime: Runtime, how: str, pages_before: int
) -> None:
    await add_subscribers(runtime, "news", 150)
    await define(api, "note", NOTE)
    body = {"topic": "news", "cancellation_key": "release-2"}
    trigger_id = (await api.post("/v1/workflows/note/trigger", json=body)).json()["trigger_id"]
    fanout = BroadcastFanout(
        runtime.storage.broadcasts, runtime.bus, page_size=100, workflows=runtime.storage.workflows
    )
    if pages_before:
        assert await fanout.fan_out_page(trigger_id, None) == 100
    if how == "broadcast":
        assert (await api.post(f"/v1/broadcasts/{trigger_id}/cancel")).status_code == 200
    else:
        cancel = await api.post("/v1/workflow-runs/cancel", json={"cancellation_key": "release-2"})
        assert cancel.json() == {"cancelled": 100 * pages_before}
    for after in (None, "s000099"):
        assert await fanout.fan_out_page(trigger_id, after) == 0
    assert sum((await runs_of_trigger(runtime, trigger_id)).values()) == 100 * pages_before
    assert (await api.get(f"/v1/broadcasts/{trigger_id}")).json()["state"] == "cancelled"
