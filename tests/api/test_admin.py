"""Templates, categories, suppressions, API keys, the sandbox, operations."""

from __future__ import annotations

import httpx
import pytest

TEMPLATE = {
    "default_locale": "en",
    "locales": {
        "en": {
            "push": {"title": "Hi {{ name }}", "body": "b"},
            "email": {"subject": "S", "text": "T", "html": "<p>{{ name }}</p>"},
        },
        "de": {"push": {"title": "Hallo {{ name }}", "body": "b"}},
    },
}


async def test_template_crud(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/templates/welcome", json=TEMPLATE)).status_code == 201
    assert (await api.put("/v1/templates/welcome", json=TEMPLATE)).status_code == 200
    assert (await api.get("/v1/templates/welcome")).json()["locales"]["de"]["push"][
        "title"
    ] == "Hallo {{ name }}"
    assert [t["name"] for t in (await api.get("/v1/templates")).json()["items"]] == ["welcome"]
    assert (await api.delete("/v1/templates/welcome")).status_code == 204
    assert (await api.get("/v1/templates/welcome")).status_code == 404


@pytest.mark.parametrize(
    ("template", "where"),
    [
        (
            {"default_locale": "en", "locales": {"en": {"push": {"title": "{% if %}"}}}},
            "locales.en.push.title",
        ),
        ({"default_locale": "fr", "locales": {"en": {"push": {"title": "x"}}}}, "default_locale"),
        ({"default_locale": "en", "locales": {"en": {"fax": {"title": "x"}}}}, "fax"),
    ],
)
async def test_a_template_that_does_not_compile_is_refused(
    api: httpx.AsyncClient, template: dict[str, object], where: str
) -> None:
    response = await api.put("/v1/templates/bad", json=template)
    assert response.status_code == 422
    error = response.json()["error"]
    assert where in error["message"] or any(where in str(d) for d in error["details"])


async def test_category_crud(api: httpx.AsyncClient) -> None:
    body = {"quiet_hours": "drop", "channels": ["email"], "policy": {"sms": "at_most_once"}}
    assert (await api.put("/v1/categories/marketing", json=body)).status_code == 201
    stored = (await api.get("/v1/categories/marketing")).json()
    assert (stored["quiet_hours"], stored["channels"], stored["policy"]) == (
        "drop",
        ["email"],
        {"sms": "at_most_once"},
    )
    assert [c["name"] for c in (await api.get("/v1/categories")).json()["items"]] == ["marketing"]
    bad = await api.put("/v1/categories/marketing", json={"quiet_hours": "snooze"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("shaping", "complaint"),
    [
        ({"digest": {"push": {}}}, "exactly one of window_seconds and at_local"),
        ({"digest": {"push": {"window_seconds": 3600, "at_local": "09:00"}}}, "exactly one"),
        ({"digest": {"push": {"window_seconds": 30}}}, "greater than or equal to 60"),
        ({"digest": {"push": {"at_local": "25:00"}}}, "between 00:00 and 23:59"),
        ({"digest": {"push": {"window_seconds": 60, "when": "sometimes"}}}, "always"),
        ({"digest": {"pigeon": {"window_seconds": 60}}}, "pigeon"),
        ({"caps": {"sms": {"limit": 0, "window_seconds": 3600}}}, "greater than or equal to 1"),
        ({"caps": {"sms": {"limit": 3}}}, "window_seconds"),
    ],
)
async def test_a_category_with_bad_shaping_is_refused(
    api: httpx.AsyncClient, shaping: dict[str, object], complaint: str
) -> None:
    response = await api.put("/v1/categories/news", json=shaping)
    assert response.status_code == 422
    assert complaint in response.text
    assert (await api.get("/v1/categories/news")).status_code == 404


async def test_a_category_keeps_its_digest_and_caps(api: httpx.AsyncClient) -> None:
    body = {
        "digest": {
            "email": {"at_local": "18:00", "template": "daily"},
            "push": {"window_seconds": 3600, "when": "over_cap"},
        },
        "caps": {"push": {"limit": 3, "window_seconds": 3600}},
    }
    assert (await api.put("/v1/categories/news", json=body)).status_code == 201
    stored = (await api.get("/v1/categories/news")).json()
    assert stored["digest"]["email"] == {
        "window_seconds": None,
        "at_local": "18:00",
        "template": "daily",
        "when": "always",
    }
    assert stored["caps"] == body["caps"]


async def test_frequency_cap_crud(api: httpx.AsyncClient) -> None:
    cap = {"limit": 3, "window_seconds": 3600}
    assert (await api.put("/v1/frequency-caps/push", json=cap)).status_code == 201
    changed = await api.put("/v1/frequency-caps/push", json={**cap, "limit": 5})
    assert changed.status_code == 200
    listed = (await api.get("/v1/frequency-caps")).json()["items"]
    assert listed == [{"channel": "push", "limit": 5, "window_seconds": 3600}]
    assert (await api.put("/v1/frequency-caps/pigeon", json=cap)).status_code == 422
    assert (await api.put("/v1/frequency-caps/sms", json={"limit": -1})).status_code == 422
    assert (await api.delete("/v1/frequency-caps/push")).status_code == 204
    assert (await api.delete("/v1/frequency-caps/push")).status_code == 404
    assert (await api.get("/v1/frequency-caps")).json()["items"] == []


async def test_suppression_crud(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/v1/suppressions", json={"channel": "email", "address": "a@example.com", "reason": "asked"}
    )
    assert created.status_code == 201
    again = await api.post(
        "/v1/suppressions", json={"channel": "email", "address": "a@example.com"}
    )
    assert (again.status_code, again.json()["id"]) == (200, created.json()["id"])
    listed = (await api.get("/v1/suppressions", params={"address": "a@example.com"})).json()[
        "items"
    ]
    assert [s["reason"] for s in listed] == ["asked"]
    assert (await api.delete(f"/v1/suppressions/{created.json()['id']}")).status_code == 204
    assert (await api.get("/v1/suppressions")).json()["items"] == []
    bad = await api.post("/v1/suppressions", json={"channel": "push", "address": "x@y.z"})
    assert bad.status_code == 422


async def test_keys_are_shown_once_scoped_and_revocable(api: httpx.AsyncClient) -> None:
    created = (await api.post("/v1/keys", json={"scopes": ["read"], "name": "dashboard"})).json()
    key = created["key"]
    listed = (await api.get("/v1/keys")).json()["items"]
    assert key not in str(listed)
    assert {k["name"] for k in listed} >= {"dashboard"}
    reader = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/v1/templates", headers=reader)).status_code == 200
    assert (await api.put("/v1/templates/x", json=TEMPLATE, headers=reader)).status_code == 403
    assert (await api.delete(f"/v1/keys/{created['id']}")).status_code == 204
    assert (await api.get("/v1/templates", headers=reader)).status_code == 401


async def test_operations_endpoints(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = (await api.get("/readyz")).json()
    assert ready == {"status": "ready", "checks": {"database": True, "bus": True}}
    assert "herald_notifications_accepted" in (await api.get("/metrics")).text
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/notifications" in spec["paths"]


async def test_unknown_routes_and_methods_use_the_error_shape(api: httpx.AsyncClient) -> None:
    missing = await api.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await api.patch("/v1/notifications")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
