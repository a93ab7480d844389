"""Traffic shaping at the API and the router: local-time sends, cancelling, tenant limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from herald.api.limits import TenantLimits
from herald.clock import FakeClock
from herald.domain import DeliveryState
from herald.runtime import Runtime
from herald.security import generate_key


async def route(api: httpx.AsyncClient, runtime: Runtime, body: dict[str, object]) -> str:
    accepted = await api.post("/v1/notifications", json=body)
    assert accepted.status_code == 202, accepted.text
    await runtime.router().route([accepted.json()["id"]])
    return str(accepted.json()["id"])


async def test_deliver_at_local_waits_for_the_recipients_wall_clock(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/tokyo", json={"timezone": "Asia/Tokyo"})
    await api.put("/v1/users/lima", json={"timezone": "America/Lima"})
    for user in ("tokyo", "lima"):
        notification_id = await route(
            api,
            runtime,
            {
                "user_id": user,
                "title": "Good morning",
                "channels": ["in_app"],
                "deliver_at_local": "09:00",
            },
        )
        (delivery,) = await runtime.storage.notifications.deliveries_of(notification_id)
        assert delivery.state == DeliveryState.DEFERRED
        assert delivery.due_at is not None
        local = delivery.due_at.astimezone(
            ZoneInfo("Asia/Tokyo" if user == "tokyo" else "America/Lima")
        )
        assert (local.hour, local.minute) == (9, 0)
        assert timedelta(0) < delivery.due_at - datetime.now(UTC) <= timedelta(hours=24)


async def test_bad_local_time_is_refused(api: httpx.AsyncClient) -> None:
    await api.put("/v1/users/u", json={})
    response = await api.post(
        "/v1/notifications", json={"user_id": "u", "title": "x", "deliver_at_local": "9am"}
    )
    assert response.status_code == 422
    assert "HH:MM" in response.json()["error"]["message"]


async def test_cancelling_a_scheduled_notification(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={"email": "u@example.com"})
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    notification_id = await route(
        api,
        runtime,
        {"user_id": "u", "title": "x", "send_at": later, "channels": ["email", "in_app"]},
    )
    response = await api.post(f"/v1/notifications/{notification_id}/cancel")
    assert response.json() == {
        "id": notification_id,
        "status": "cancelled",
        "deliveries_cancelled": 2,
    }
    deliveries = await runtime.storage.notifications.deliveries_of(notification_id)
    assert {(d.state, d.last_error) for d in deliveries} == {(DeliveryState.SKIPPED, "cancelled")}
    assert (await runtime.storage.deliveries.claim([d.id for d in deliveries], 30)).claimed == []
    again = await api.post(f"/v1/notifications/{notification_id}/cancel")
    assert again.status_code == 409
    assert (await api.post("/v1/notifications/nope/cancel")).status_code == 404


async def test_cancelling_before_routing_sends_nothing(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={})
    accepted = await api.post("/v1/notifications", json={"user_id": "u", "title": "x"})
    notification_id = accepted.json()["id"]
    assert (await api.post(f"/v1/notifications/{notification_id}/cancel")).status_code == 200
    await runtime.router().route([notification_id])
    assert await runtime.storage.notifications.deliveries_of(notification_id) == []
    assert (await api.get(f"/v1/notifications/{notification_id}")).json()["status"] == "cancelled"


async def test_a_key_over_its_request_rate_gets_429_and_others_do_not(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    clock = FakeClock(datetime.now(UTC))
    runtime.limits = TenantLimits(clock, requests_per_s=3, notifications_per_s=0)
    statuses = [(await api.get("/v1/templates")).status_code for _ in range(7)]
    assert statuses == [200] * 6 + [429]
    limited = await api.get("/v1/templates")
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    other = generate_key()
    await runtime.storage.keys.create_api_key(other.id, other.secret_hash, ["read"], "other tenant")
    assert (
        await api.get("/v1/templates", headers={"Authorization": f"Bearer {other.token}"})
    ).status_code == 200
    clock.advance(1)
    assert (await api.get("/v1/templates")).status_code == 200


async def test_a_key_over_its_notification_rate_gets_429_and_nothing_is_accepted(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/u", json={})
    runtime.limits = TenantLimits(
        FakeClock(datetime.now(UTC)), requests_per_s=0, notifications_per_s=300
    )
    batch = [{"idempotency_key": f"k{n}", "user_id": "u", "title": "x"} for n in range(1000)]
    assert (
        await api.post("/v1/notifications/batch", json={"notifications": batch})
    ).status_code == 200
    refused = await api.post("/v1/notifications", json={"user_id": "u", "title": "one more"})
    assert refused.status_code == 429
    assert await runtime.storage.outbox.size() == 1000
