"""Rich push through the API: options validated field by field, a push too big for APNs or
FCM refused with a 422 naming the largest part, and the options reaching the push
delivery through the pipeline (the sandbox keeps what would have gone out)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.herald import Pipeline, eventually
from tests.fixtures.sends import sandbox_rows

IOS = "ab" * 32
RICH = {
    "image": "https://cdn.example.com/receipt.png",
    "actions": [{"id": "view", "title": "View"}],
    "thread_id": "order-42",
    "interruption_level": "time-sensitive",
    "relevance_score": 0.5,
    "badge": 2,
    "sound": "default",
}


@pytest.fixture
async def user(api: httpx.AsyncClient) -> str:
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    assert (
        await api.post("/v1/users/42/devices", json={"platform": "ios", "token": IOS})
    ).status_code == 201
    return "42"


@pytest.mark.parametrize(
    ("push", "field"),
    [
        ({"interruption_level": "loud"}, "push.interruption_level"),
        ({"relevance_score": 1.5}, "push.relevance_score"),
        ({"image": "http://cdn.example.com/x.png"}, "push.image"),
        ({"badge": -1}, "push.badge"),
        ({"actions": [{"id": f"a{i}", "title": "A"} for i in range(4)]}, "push.actions"),
        ({"actions": [{"id": "has space", "title": "A"}]}, "push.actions.0.id"),
        ({"colour": "red"}, "push.colour"),
    ],
)
async def test_bad_options_are_422_naming_the_field(
    api: httpx.AsyncClient, user: str, push: dict[str, Any], field: str
) -> None:
    answer = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "Hi", "push": push}
    )
    assert answer.status_code == 422
    assert field in [d["field"] for d in answer.json()["error"]["details"]]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"data": {"blob": "x" * 4000}, "push": RICH}, "data"),
        ({"body": "y" * 4090, "channels": ["push"]}, "body"),
    ],
)
async def test_a_push_over_4_kb_is_422_naming_what_is_too_big(
    api: httpx.AsyncClient, user: str, content: dict[str, Any], field: str
) -> None:
    answer = await api.post("/v1/notifications", json={"user_id": user, "title": "Hi", **content})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "push_too_large"
    assert [d["field"] for d in error["details"]] == [field]
    assert "bytes over its 4096-byte limit" in error["message"]


async def test_big_data_without_push_asked_for_is_still_accepted(
    api: httpx.AsyncClient, user: str
) -> None:
    # Only the router knows which channels it goes out on: push is skipped there, not here.
    answer = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "Hi", "data": {"b": "x" * 5000}}
    )
    assert answer.status_code == 202


async def test_options_reach_the_push_delivery(
    api: httpx.AsyncClient, pipeline: Pipeline, user: str
) -> None:
    answer = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "Paid", "body": "€12", "push": RICH}
    )
    assert answer.status_code == 202

    async def pushed() -> list[dict[str, Any]]:
        return [r for r in await sandbox_rows(api, user_id=user) if r["channel"] == "push"]

    [row] = await eventually(pushed)
    assert row["payload"]["push"] == RICH
