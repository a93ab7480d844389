"""A worker logs one INFO line per delivery outcome and counts deliveries by their final
state, on both backends."""

from __future__ import annotations

import httpx
from structlog.testing import capture_logs

from herald.metrics import METRICS
from tests.fixtures.herald import Pipeline, eventually


async def test_each_outcome_is_one_line_and_one_count(
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
            return [e for e in events if e["event"] == "delivery outcome"]

        (line,) = await eventually(logged)
    delivery = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"][0]
    assert line["log_level"] == "info"
    assert {k: line[k] for k in ("notification_id", "delivery_id", "channel", "provider")} == {
        "notification_id": notification_id,
        "delivery_id": delivery["id"],
        "channel": "email",
        "provider": "sandbox",
    }
    assert (line["state"], line["attempt"]) == ("sent", 1)
    assert isinstance(line["duration_ms"], float)
    assert finished._value.get() == before + 1
