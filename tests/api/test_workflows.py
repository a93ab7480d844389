"""The workflow API's answers to bad input: 404, 422 naming what is wrong, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

DEFINITION = {"category": "orders", "steps": [{"id": "push", "type": "send"}]}


async def test_definitions_are_created_read_listed_and_deleted(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/workflows/shipped", json=DEFINITION)).status_code == 201
    assert (await api.put("/v1/workflows/shipped", json=DEFINITION)).status_code == 200
    assert (await api.get("/v1/workflows/shipped")).json() == {"key": "shipped", **DEFINITION}
    assert [w["key"] for w in (await api.get("/v1/workflows")).json()["items"]] == ["shipped"]
    assert (await api.delete("/v1/workflows/shipped")).status_code == 204
    assert (await api.get("/v1/workflows/shipped")).status_code == 404
    assert (await api.delete("/v1/workflows/shipped")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": [{"id": "a", "type": "fax"}]}, "steps[0] ('a')"),
        (
            {"steps": [{"id": "a", "type": "send", "if": {"step": "b", "not": ["opened"]}}]},
            "steps[0] ('a').if",
        ),
        ({"steps": [{"id": "d", "type": "delay", "seconds": 10**9}]}, "steps[0] ('d')"),
        ({"steps": [{"id": f"s{n}", "type": "send"} for n in range(21)]}, "steps"),
        ("not an object", "body"),
        ({"steps": [{"id": "a", "type": "send", "channels": "push"}]}, "steps[0] ('a')"),
    ],
)
async def test_an_invalid_definition_is_a_422_naming_the_step(
    api: httpx.AsyncClient, body: Any, field: str
) -> None:
    response = await api.put("/v1/workflows/bad", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_workflow"
    assert error["details"][0]["field"] == field


async def test_bad_triggers_runs_and_events_are_4xx(api: httpx.AsyncClient) -> None:
    trigger = {"user_id": "u", "title": "t"}
    unknown = await api.post("/v1/workflows/nope/trigger", json=trigger)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    await api.put("/v1/workflows/shipped", json=DEFINITION)
    nobody = await api.post("/v1/workflows/shipped/trigger", json=trigger)
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (422, "unknown_user")
    both = await api.post("/v1/workflows/shipped/trigger", json={"user_id": "u", "user_ids": ["u"]})
    assert both.status_code == 422
    too_many = {"user_ids": [f"u{n}" for n in range(1001)]}
    assert (await api.post("/v1/workflows/shipped/trigger", json=too_many)).status_code == 422
    assert (await api.get("/v1/workflow-runs/nope")).status_code == 404
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    long_name = await api.post("/v1/events", json={"user_id": "u", "name": "x" * 201})
    assert long_name.status_code == 422
    assert (await api.post("/v1/events", json={"user_id": "ghost", "name": "x"})).status_code == 404
    cancel = await api.post("/v1/workflow-runs/cancel", json={})
    assert cancel.status_code == 422
