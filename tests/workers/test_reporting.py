"""A worker's outcome reports: one INFO line per batch and provider for what the provider
took, one line per delivery for anything else, and counts by final state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from structlog.testing import capture_logs

from herald.domain import Channel, DeliveryState
from herald.metrics import METRICS
from herald.storage import DeliveryUpdate
from herald.workers.reporting import report_outcomes
from tests.fixtures.herald import Pipeline, eventually

S = DeliveryState
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def test_a_sent_delivery_is_named_in_a_line_and_counted(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/42", json={"email": "ada@example.com", "timezone": "UTC"})
    finished = METRICS.deliveries_finished.labels("email", "sandbox", "sent")
    before = finished._value.get()
    with capture_logs() as events:
        accepted = await api.post(
            "/v1/notifications", json={"user_id": "42", "title": "Hi", "channels": ["email"]}
        )
        notification_id = accepted.json()["id"]

        async def logged() -> list[dict[str, object]]:
            return [e for e in events if e["event"] == "deliveries handed over"]

        (line,) = await eventually(logged)
    delivery = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"][0]
    assert line["log_level"] == "info"
    assert {k: line[k] for k in ("channel", "provider", "state", "count")} == {
        "channel": "email",
        "provider": "sandbox",
        "state": "sent",
        "count": 1,
    }
    assert (line["delivery_ids"], line["notification_ids"]) == ([delivery["id"]], [notification_id])
    assert line["attempts"] == [1]
    assert isinstance(line["max_duration_ms"], float)
    assert finished._value.get() == before + 1


def _update(n: int, state: DeliveryState, error: str | None = None) -> DeliveryUpdate:
    return DeliveryUpdate(
        f"d{n}",
        f"n{n}",
        state,
        "fcm",
        last_error=error,
        due_at=NOW + timedelta(seconds=30) if state == S.DEFERRED else None,
        attempt=1,
        claimed_at=NOW - timedelta(milliseconds=40),
    )


def test_a_batch_is_one_line_for_what_went_out_and_one_per_delivery_otherwise() -> None:
    sent = METRICS.deliveries_finished.labels("push", "fcm", "sent")
    dead = METRICS.deliveries_finished.labels("push", "fcm", "undeliverable")
    sent_before, dead_before = sent._value.get(), dead._value.get()
    updates = [
        _update(1, S.SENT),
        _update(2, S.DEFERRED, "fcm 503: UNAVAILABLE"),
        _update(3, S.SENT),
        _update(4, S.UNDELIVERABLE, "fcm 404: UNREGISTERED"),
    ]
    with capture_logs() as events:
        report_outcomes(Channel.PUSH, updates, {}, NOW)
    (summary,) = [e for e in events if e["event"] == "deliveries handed over"]
    assert (summary["count"], summary["delivery_ids"], summary["notification_ids"]) == (
        2,
        ["d1", "d3"],
        ["n1", "n3"],
    )
    assert summary["max_duration_ms"] == 40.0
    each = {e["delivery_id"]: e for e in events if e["event"] == "delivery outcome"}
    assert set(each) == {"d2", "d4"}
    assert (each["d2"]["state"], each["d2"]["error"]) == ("deferred", "fcm 503: UNAVAILABLE")
    assert each["d2"]["retry_at"] == (NOW + timedelta(seconds=30)).isoformat()
    assert each["d4"]["state"] == "undeliverable"
    assert (sent._value.get(), dead._value.get()) == (sent_before + 2, dead_before + 1)
