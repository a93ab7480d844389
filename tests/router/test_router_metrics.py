"""The router counts what it planned, per channel and state."""

from __future__ import annotations

import httpx

from herald.metrics import METRICS
from herald.runtime import Runtime


async def test_planned_deliveries_are_counted_by_channel_and_state(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await api.put("/v1/users/m", json={"timezone": "UTC"})  # no device: push is skipped
    body = {"user_id": "m", "title": "x", "channels": ["push", "in_app"]}
    ids = [(await api.post("/v1/notifications", json=body)).json()["id"] for _ in range(3)]
    counters = {
        key: METRICS.planned.labels(*key) for key in [("in_app", "queued"), ("push", "skipped")]
    }
    before = {key: counter._value.get() for key, counter in counters.items()}

    await runtime.router().route(ids)

    grown = {key: counter._value.get() - before[key] for key, counter in counters.items()}
    assert grown == {("in_app", "queued"): 3, ("push", "skipped"): 3}
