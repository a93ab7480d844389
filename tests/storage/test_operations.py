"""The backlog an operator watches (outbox depth, waiting deliveries and the age of the
oldest, scheduler lag) and the delivery log as `herald tail` reads it, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from herald.clock import FakeClock
from herald.domain import DeliveryState
from herald.runtime import Runtime
from herald.storage.operations import LoggedEvent, LogPosition, TailFilter
from herald.storage.records import ProviderReport
from tests.fixtures.herald import Pipeline, eventually


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))


async def test_the_outbox_depth_and_its_oldest_row(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    for title in ("a", "b"):
        await api.post("/v1/notifications", json={"user_id": "42", "title": title})
    clock.advance(90)
    backlog = await runtime.storage.operations.backlog()
    assert backlog.outbox_depth == 2
    assert backlog.outbox_oldest_age_seconds == 90
    assert backlog.deliveries[DeliveryState.QUEUED].count == 0


async def test_deferred_deliveries_and_the_scheduler_lag(
    api: httpx.AsyncClient, pipeline: Pipeline, runtime: Runtime, clock: FakeClock
) -> None:
    await api.put("/v1/users/42", json={"email": "ada@example.com", "timezone": "UTC"})
    send_at = (clock.now() + timedelta(seconds=60)).isoformat()
    await api.post(
        "/v1/notifications",
        json={"user_id": "42", "title": "Later", "channels": ["email"], "send_at": send_at},
    )

    async def deferred() -> bool:
        backlog = await runtime.storage.operations.backlog()
        return backlog.deliveries[DeliveryState.DEFERRED].count == 1

    await eventually(deferred)
    await pipeline.close()  # no scheduler from here on: the delivery stays overdue
    assert (await runtime.storage.operations.backlog()).scheduler_lag_seconds == 0
    clock.advance(60 + 45)
    backlog = await runtime.storage.operations.backlog()
    assert backlog.scheduler_lag_seconds == 45
    assert backlog.deliveries[DeliveryState.DEFERRED].oldest_age_seconds == 105


async def test_workflow_timers_due_and_how_late_the_oldest_is(
    api: httpx.AsyncClient, pipeline: Pipeline, runtime: Runtime, clock: FakeClock
) -> None:
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    pause = {"steps": [{"id": "pause", "type": "delay", "seconds": 60}]}
    assert (await api.put("/v1/workflows/later", json=pause)).status_code in (200, 201)
    for key in ("t1", "t2"):
        triggered = await api.post(
            "/v1/workflows/later/trigger", json={"user_id": "42"}, headers={"Idempotency-Key": key}
        )
        assert triggered.status_code == 202, triggered.text

    async def delays_started() -> bool:  # the scheduler took both runs: their delay runs
        return (await runtime.storage.operations.backlog()).workflow_timers_due == 0

    await eventually(delays_started)
    await pipeline.close()  # no scheduler from here on: the timers stay where they are
    clock.advance(30)
    backlog = await runtime.storage.operations.backlog()
    assert (backlog.workflow_timers_due, backlog.workflow_timer_lag_seconds) == (0, 0)
    clock.advance(30 + 20)
    backlog = await runtime.storage.operations.backlog()
    assert (backlog.workflow_timers_due, backlog.workflow_timer_lag_seconds) == (2, 20)


async def test_the_log_after_an_entry_filtered_by_user_and_state(
    api: httpx.AsyncClient, pipeline: Pipeline, runtime: Runtime
) -> None:
    for user in ("42", "43"):
        await api.put(f"/v1/users/{user}", json={"email": f"u{user}@example.com"})
        await api.post(
            "/v1/notifications", json={"user_id": user, "title": "Hi", "channels": ["email"]}
        )
    operations = runtime.storage.operations

    async def sent_to_both() -> bool:
        found, _ = await operations.log_after(None, TailFilter(state="sent"))
        return len(found) == 2

    await eventually(sent_to_both)
    only_42, _ = await operations.log_after(None, TailFilter(user_id="42", state="sent"))
    assert [(e.user_id, e.channel, e.state) for e in only_42] == [("42", "email", "sent")]
    # A send the row tells is an entry with no event id, with what its event would say.
    assert only_42[0].id is None
    assert only_42[0].provider
    assert set(only_42[0].detail) == {"attempt", "claimed_at", "provider_message_id"}
    assert await operations.log_after(None, TailFilter(state="queued")) == ([], LogPosition())
    everything, newest = await operations.log_after(None, TailFilter())
    assert [e.state for e in everything] == ["sent", "sent"]
    assert await operations.log_after(newest, TailFilter()) == ([], newest)
    after_first, _ = await operations.log_after(LogPosition().after(everything[:1]), TailFilter())
    assert after_first == everything[1:]


async def test_the_log_merges_written_events_and_told_sends_in_time_order(
    api: httpx.AsyncClient, pipeline: Pipeline, runtime: Runtime, clock: FakeClock
) -> None:
    """A webhook's word on a send is a written event after the send the row tells (at
    the same instant too); each call hands out only what the other source cannot still
    precede, at most `limit`."""
    await api.put("/v1/users/42", json={"email": "ada@example.com"})
    operations = runtime.storage.operations
    for count, title in enumerate(("a", "b", "c"), start=1):
        clock.advance(1)
        await api.post(
            "/v1/notifications", json={"user_id": "42", "title": title, "channels": ["email"]}
        )

        async def sent(count: int = count) -> bool:
            found, _ = await operations.log_after(None, TailFilter(state="sent"))
            return len(found) == count

        await eventually(sent)
    first, _ = await operations.log_after(None, TailFilter(), limit=1)
    [send] = first
    delivery = (await runtime.storage.notifications.deliveries_of(send.notification_id))[0]
    assert send.at == clock.now()  # the webhook's word comes at the instant of the send
    await runtime.storage.feedback.record_provider_events(
        [ProviderReport(delivery.id, None, DeliveryState.DELIVERED, "smtp")]
    )
    everything, _ = await operations.log_after(None, TailFilter())
    assert [(e.state, e.id is None) for e in everything] == [
        ("sent", True),
        ("sent", True),
        ("sent", True),
        ("delivered", False),
    ]
    seen: list[LoggedEvent] = []
    position = LogPosition()
    for _ in range(6):
        page, position = await operations.log_after(position, TailFilter(), limit=2)
        assert len(page) <= 2
        seen += page
    assert seen == everything
