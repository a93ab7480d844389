"""Input the API refuses before anything is stored or even read (issue 18, items 1, 5, 15
and 16), on both backends: bodies of unauthenticated callers are not read, bodies over
the limit are a 413 however they arrive, JSON is read strictly, text that a backend
cannot store is refused the same on both, and times stay within what Herald schedules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from herald.api.app import DEFAULT_BODY_LIMIT, create_app
from herald.runtime import Runtime
from herald.security import generate_key

USER = {"email": "ada@example.com", "timezone": "Europe/Berlin"}


@pytest.fixture
async def user(api: httpx.AsyncClient) -> str:
    assert (await api.put("/v1/users/42", json=USER)).status_code == 201
    return "42"


def raw(value: Any) -> bytes:
    """JSON with every non-ASCII character escaped, lone surrogates and NUL included
    (httpx's own encoder writes UTF-8, which cannot carry a lone surrogate)."""
    return json.dumps(value, ensure_ascii=True).encode()


async def send_raw(api: httpx.AsyncClient, method: str, path: str, body: bytes) -> httpx.Response:
    return await api.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )


def assert_refused(response: httpx.Response, field: str, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert field in [d["field"] for d in error["details"]], error
    return error


# -- item 5: authenticate before reading the body; 413 however the body arrives ---------


class CountedBody:
    """A streamed request body (no Content-Length: sent chunked) that counts how much of
    it the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.consumed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            piece = b" " * min(self.chunk, self.total - sent)
            sent += len(piece)
            self.consumed = sent
            yield piece


@pytest.fixture
async def bare_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("POST", "/v1/broadcasts", "send"),
        ("POST", "/v1/notifications", "send"),
        ("POST", "/v1/notifications/batch", "send"),
        ("PUT", "/v1/users/u1", "manage"),
        ("PUT", "/v1/templates/t1", "manage"),
    ],
)
@pytest.mark.parametrize("credentials", ["missing", "unknown key", "key without the scope"])
async def test_a_caller_that_may_not_call_is_answered_before_its_body_is_read(
    bare_client: httpx.AsyncClient,
    runtime: Runtime,
    method: str,
    path: str,
    rule: str,
    credentials: str,
) -> None:
    headers = {"Content-Type": "application/json"}
    if credentials == "unknown key":
        headers["Authorization"] = f"Bearer {generate_key().token}"
    elif credentials == "key without the scope":
        key = generate_key()
        await runtime.storage.keys.create_api_key(key.id, key.secret_hash, ["read"], "reader")
        headers["Authorization"] = f"Bearer {key.token}"
    body = CountedBody(DEFAULT_BODY_LIMIT // 2)  # within every limit: only auth refuses it
    response = await bare_client.request(method, path, content=body, headers=headers)
    expected = 403 if credentials == "key without the scope" else 401
    assert response.status_code == expected, response.text
    assert response.json()["error"]["code"] == ("forbidden" if expected == 403 else "unauthorized")
    assert body.consumed == 0


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/notifications", DEFAULT_BODY_LIMIT), ("/v1/users/u1", DEFAULT_BODY_LIMIT)],
)
async def test_a_chunked_body_over_the_limit_is_a_413_and_is_not_read_to_its_end(
    api: httpx.AsyncClient, path: str, limit: int
) -> None:
    body = CountedBody(limit * 4)
    method = "PUT" if path.startswith("/v1/users") else "POST"
    response = await api.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert body.consumed <= limit + body.chunk


# -- item 15: strict JSON and strict models -----------------------------------------------


NOTE = b'"user_id": "42", "title": "x"'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{" + NOTE + b', "data": {"v": NaN}}', "data.v"),
        (b"{" + NOTE + b', "data": {"v": Infinity}}', "data.v"),
        (b"{" + NOTE + b', "data": {"v": [1, -Infinity]}}', "data.v.1"),
        (b"{" + NOTE + b', "data": {"v": 1e400}}', "data.v"),
        (b'{"user_id": "42", "user_id": "43", "title": "x"}', "user_id"),
        (b"{" + NOTE + b', "data": {"a": {"b": 1, "b": 2}}}', "data.a.b"),
        (b"{" + NOTE + b', "ttl_seconds": "60"}', "ttl_seconds"),
        (b"{" + NOTE + b', "ttl_seconds": true}', "ttl_seconds"),
        (b"{" + NOTE + b', "ttl_seconds": 60.0}', "ttl_seconds"),
        (b"{" + NOTE + b', "send_at": 1767258000}', "send_at"),
        (b'{"user_id": 42, "title": "x"}', "user_id"),
    ],
    ids=lambda value: value.decode() if isinstance(value, bytes) else value,
)
async def test_notifications_are_read_strictly(
    api: httpx.AsyncClient, user: str, runtime: Runtime, body: bytes, field: str
) -> None:
    assert_refused(await send_raw(api, "POST", "/v1/notifications", body), field)
    assert await runtime.storage.outbox.size() == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/users/42/preferences", {"channels": {"push": "true"}}, "channels.push"),
        ("PUT", "/v1/users/42/preferences", {"channels": {"push": 1}}, "channels.push"),
        ("PUT", "/v1/categories/c1", {"caps": {"sms": {"limit": "5", "window_seconds": 60}}},
         "caps.sms.limit"),
        ("POST", "/v1/broadcasts", {"user_ids": ["42"], "notification": {"title": "x",
         "ttl_seconds": "60"}}, "notification.ttl_seconds"),
        ("POST", "/v1/notifications/batch", {"notifications": [{"idempotency_key": "k",
         "user_id": "42", "title": "x", "data": {"n": float("nan")}}]},
         "notifications.0.data.n"),
    ],
)  # fmt: skip
async def test_every_body_is_read_strictly(
    api: httpx.AsyncClient, user: str, method: str, path: str, body: Any, field: str
) -> None:
    response = await api.request(
        method,
        path,
        content=json.dumps(body).encode(),  # json.dumps writes NaN, as careless clients do
        headers={"Content-Type": "application/json", "Idempotency-Key": "strict"},
    )
    assert_refused(response, field)


async def test_strict_models_still_read_enums_and_times_from_json(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    later = (runtime.clock.now() + timedelta(days=1)).isoformat()
    body = {"user_id": user, "title": "x", "priority": "high", "channels": ["email"],
            "send_at": later, "ttl_seconds": 60}  # fmt: skip
    assert (await api.post("/v1/notifications", json=body)).status_code == 202
    preferences = {"channels": {"push": False}, "quiet_hours": {"start": "22:00", "end": "07:00"}}
    assert (await api.put(f"/v1/users/{user}/preferences", json=preferences)).status_code == 200


# -- item 16: text neither backend can store, and invisible characters in identifiers ----


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("PUT", "/v1/users/a%00b", "path.user_id"),
        ("GET", "/v1/users/a%00b", "path.user_id"),
        ("GET", "/v1/notifications/n%00", "path.notification_id"),
        ("DELETE", "/v1/users/42/devices/d%00", "path.device_id"),
        ("DELETE", "/v1/suppressions/s%00", "path.suppression_id"),
        ("GET", "/v1/sandbox/messages?user_id=a%00b", "query.user_id"),
        ("GET", "/v1/suppressions?address=a%00b", "query.address"),
        ("PUT", "/v1/users/a%E2%80%AEb", "path.user_id"),  # U+202E RIGHT-TO-LEFT OVERRIDE
        ("PUT", "/v1/users/a%E2%81%A6b", "path.user_id"),  # U+2066 LEFT-TO-RIGHT ISOLATE
        ("DELETE", "/v1/users/42/devices/d%E2%80%AA", "path.device_id"),
        ("PUT", "/v1/users/42/topics/news%E2%80%AE", "path.topic"),
    ],
)
async def test_parameters_with_nul_or_bidi_controls_are_refused_naming_them(
    api: httpx.AsyncClient, user: str, method: str, path: str, field: str
) -> None:
    body = raw(USER) if method == "PUT" and path.count("/") == 3 else None
    response = await api.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )
    assert_refused(response, field)


TEMPLATE = {"default_locale": "en", "locales": {"en": {"push": {"title": "Hi", "body": "x"}}}}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/notifications", {"user_id": "4\u00002", "title": "x"}, "user_id"),
        ("POST", "/v1/notifications", {"user_id": "42", "title": "a\u0000"}, "title"),
        ("POST", "/v1/notifications", {"user_id": "42", "title": "a\ud800"}, "title"),
        ("POST", "/v1/notifications", {"user_id": "42", "data": {"a": {"b": ["ok", "\u0000"]}}},
         "data.a.b.1"),
        ("POST", "/v1/notifications", {"user_id": "42", "data": {"k\u0000": 1}}, "data.k\\x00"),
        ("POST", "/v1/notifications", {"user_id": "42", "template": "t", "variables":
         {"name": "\u0000"}}, "variables.name"),
        ("POST", "/v1/notifications", {"user_id": "4\u202e2", "title": "x"}, "user_id"),
        ("POST", "/v1/notifications/batch", {"notifications": [{"idempotency_key": "k",
         "user_id": "42", "body": "\u0000"}]}, "notifications.0.body"),
        ("POST", "/v1/broadcasts", {"user_ids": ["42", "a\u2069"], "notification":
         {"title": "x"}}, "user_ids.1"),
        ("PUT", "/v1/templates/t", {**TEMPLATE, "locales": {"en": {"push": {"title": "\u0000"}}}},
         "locales.en.push.title"),
        ("PUT", "/v1/users/42", {**USER, "email": "a\u0000@example.com"}, "email"),
        ("POST", "/v1/suppressions", {"channel": "sms", "address": "+1415\u0000"}, "address"),
        ("POST", "/v1/keys", {"scopes": ["read"], "name": "n\u0000"}, "name"),
    ],
)  # fmt: skip
async def test_body_text_neither_backend_can_store_is_refused_naming_the_field(
    api: httpx.AsyncClient,
    user: str,
    runtime: Runtime,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    response = await api.request(
        method,
        path,
        content=raw(body),
        headers={"Content-Type": "application/json", "Idempotency-Key": "nul"},
    )
    assert_refused(response, field)
    assert await runtime.storage.outbox.size() == 0


# -- item 1: times within what Herald schedules ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"send_at": "9999-12-31T23:59:59Z"}, "send_at"),
        ({"send_at": "9999-12-31T23:59:59-14:00"}, "send_at"),
        ({"send_at": "0001-01-01T00:00:00+14:00"}, "send_at"),
        ({"send_at": "9999-12-31T23:59:59Z", "deliver_at_local": "09:00"}, "send_at"),
        ({"ttl_seconds": 10**12}, "ttl_seconds"),
    ],
)
async def test_times_out_of_range_are_refused_naming_the_field(
    api: httpx.AsyncClient, runtime: Runtime, extra: dict[str, Any], field: str
) -> None:
    await api.put("/v1/users/k", json={"timezone": "Pacific/Kiritimati"})
    body = {"user_id": "k", "title": "x", **extra}
    assert_refused(await api.post("/v1/notifications", json=body), field)
    broadcast = {"user_ids": ["k"], "notification": {"title": "x", **extra}}
    response = await api.post("/v1/broadcasts", json=broadcast, headers={"Idempotency-Key": "b"})
    assert_refused(response, f"notification.{field}")
    assert await runtime.storage.outbox.size() == 0


async def test_send_at_is_bounded_to_a_year_either_side_of_now(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    now = runtime.clock.now()
    items = [
        {"idempotency_key": str(i), "user_id": user, "title": "x", "send_at": at.isoformat()}
        for i, at in enumerate(
            [
                now + timedelta(days=365),
                now - timedelta(days=365),
                now + timedelta(days=367),
                now - timedelta(days=367),
            ]
        )
    ]
    response = await api.post("/v1/notifications/batch", json={"notifications": items})
    outcomes = response.json()["items"]
    assert [o["status"] for o in outcomes] == ["accepted", "accepted", "rejected", "rejected"]
    for outcome in outcomes[2:]:
        assert [d["field"] for d in outcome["error"]["details"]] == ["send_at"]


@pytest.mark.parametrize(
    "body",
    [
        '{"user_id": "42", "title": "a\\u0000"}'.encode("utf-16"),  # json.loads takes UTF-16
        b'{"user_id": "42", "title": "a\xed\xa0\x80"}',  # a surrogate as raw bytes
    ],
    ids=["utf-16", "raw surrogate"],
)
async def test_bodies_that_are_not_utf8_are_malformed(
    api: httpx.AsyncClient, user: str, runtime: Runtime, body: bytes
) -> None:
    response = await send_raw(api, "POST", "/v1/notifications", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_json"
    assert await runtime.storage.outbox.size() == 0
