"""Who may call what: the auth table, API key scopes, inbox tokens, and keys kept secret.

The table below is written out by hand on purpose. Adding an endpoint without adding it
here (with the rule it should have) fails `test_route_table_is_complete_and_explicit`, and
every endpoint in it is then probed with missing, malformed, revoked and under-scoped
credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import httpx
import orjson
import pytest
import structlog
import structlog.testing
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

import herald.security
from herald import web
from herald.api.app import ROUTE_MODULES, create_app, route_scopes
from herald.config import Settings
from herald.runtime import Runtime
from herald.security import SCOPES, Signer, generate_key
from herald.storage import InboxItem, new_id
from tests.fixtures.asgi import http_get_scope
from tests.fixtures.herald import secret_of

EXPECTED_RULES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/v1/unsubscribe"): "public",
    ("POST", "/v1/unsubscribe"): "public",
    ("POST", "/v1/webhooks/{provider}"): "public",
    ("POST", "/v1/webhooks/ses"): "public",
    ("POST", "/v1/webhooks/sns"): "public",
    ("GET", "/v1/categories"): "read",
    ("GET", "/v1/notifications"): "read",
    ("GET", "/v1/users"): "read",
    ("GET", "/v1/broadcasts"): "read",
    ("GET", "/v1/topics"): "read",
    ("GET", "/v1/deliveries/{delivery_id}"): "read",
    ("GET", "/v1/dead-letters"): "read",
    ("POST", "/v1/dead-letters/{delivery_id}/replay"): "manage",
    ("POST", "/v1/dead-letters/replay"): "manage",
    ("GET", "/v1/frequency-caps"): "read",
    ("PUT", "/v1/frequency-caps/{channel}"): "manage",
    ("DELETE", "/v1/frequency-caps/{channel}"): "manage",
    ("GET", "/v1/users/{user_id}/digests"): "read",
    ("GET", "/v1/categories/{name}"): "read",
    ("PUT", "/v1/categories/{name}"): "manage",
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("POST", "/v1/notifications"): "send",
    ("POST", "/v1/notifications/batch"): "send",
    ("GET", "/v1/notifications/{notification_id}"): "read",
    ("GET", "/v1/notifications/{notification_id}/events"): "read",
    ("POST", "/v1/notifications/{notification_id}/cancel"): "send",
    ("POST", "/v1/broadcasts"): "send",
    ("GET", "/v1/broadcasts/{broadcast_id}"): "read",
    ("POST", "/v1/broadcasts/{broadcast_id}/cancel"): "send",
    ("GET", "/v1/topics/{topic}/subscribers"): "read",
    ("GET", "/v1/users/{user_id}/topics"): "read",
    ("PUT", "/v1/users/{user_id}/topics/{topic}"): "manage",
    ("DELETE", "/v1/users/{user_id}/topics/{topic}"): "manage",
    ("GET", "/v1/sandbox/messages"): "read",
    ("GET", "/v1/suppressions"): "read",
    ("POST", "/v1/suppressions"): "manage",
    ("DELETE", "/v1/suppressions/{suppression_id}"): "manage",
    ("GET", "/v1/templates"): "read",
    ("GET", "/v1/templates/{name}"): "read",
    ("PUT", "/v1/templates/{name}"): "manage",
    ("DELETE", "/v1/templates/{name}"): "manage",
    ("GET", "/v1/users/{user_id}"): "read",
    ("PUT", "/v1/users/{user_id}"): "manage",
    ("DELETE", "/v1/users/{user_id}"): "manage",
    ("GET", "/v1/users/{user_id}/devices"): "read",
    ("POST", "/v1/users/{user_id}/devices"): "manage",
    ("DELETE", "/v1/users/{user_id}/devices/{device_id}"): "manage",
    ("GET", "/v1/users/{user_id}/channels"): "read",
    ("GET", "/v1/users/{user_id}/channels/{kind}"): "read",
    ("PUT", "/v1/users/{user_id}/channels/{kind}"): "manage",
    ("DELETE", "/v1/users/{user_id}/channels/{kind}"): "manage",
    ("GET", "/v1/users/{user_id}/preferences"): "read",
    ("PUT", "/v1/users/{user_id}/preferences"): "manage",
    ("POST", "/v1/users/{user_id}/inbox-token"): "manage",
    ("GET", "/v1/users/{user_id}/inbox"): "inbox-or-read",
    ("GET", "/v1/users/{user_id}/inbox/stream"): "inbox-or-read",
    ("POST", "/v1/users/{user_id}/inbox/read-all"): "inbox-or-manage",
    ("POST", "/v1/users/{user_id}/inbox/{item_id}/read"): "inbox-or-manage",
    # Engagement: the app reports with an API key or the delivery's user's inbox token; the
    # email pixel and click redirects carry their own signed token.
    ("POST", "/v1/deliveries/{delivery_id}/engagement"): "inbox-or-send",
    ("GET", "/v1/track/open/{token}.gif"): "public",
    ("GET", "/v1/track/click/{token}"): "public",
    ("PUT", "/v1/workflows/{key}"): "manage",
    ("GET", "/v1/workflows/{key}"): "read",
    ("DELETE", "/v1/workflows/{key}"): "manage",
    ("GET", "/v1/workflows"): "read",
    ("POST", "/v1/workflows/{key}/trigger"): "send",
    ("GET", "/v1/workflow-runs/{run_id}"): "read",
    ("POST", "/v1/workflow-runs/cancel"): "send",
    ("POST", "/v1/events"): "send",
}

# Which API key scopes pass each rule (written out, not imported: this is the contract).
ALLOWED_SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin"}),
    "send": frozenset({"admin", "send"}),
    "manage": frozenset({"admin", "manage"}),
    "read": frozenset({"admin", "read", "manage", "send"}),
}

PROTECTED = sorted(k for k, rule in EXPECTED_RULES.items() if rule != "public")
NON_INBOX = sorted(k for k in PROTECTED if not EXPECTED_RULES[k].startswith("inbox-"))
STREAM = "/v1/users/{user_id}/inbox/stream"


def app_without_runtime() -> FastAPI:
    """The app as far as its routes and OpenAPI document go: no Runtime is started."""
    stub = SimpleNamespace(settings=Settings(api_key=None, kafka_bootstrap=None))
    return create_app(cast(Runtime, stub))


def _id(endpoint: tuple[str, str]) -> str:
    return f"{endpoint[0]} {endpoint[1]}"


def _base_rule(rule: str) -> str:
    return rule.removeprefix("inbox-or-")


def concrete(path: str, **values: str) -> str:
    """The path with every {parameter} filled in (values given, else a harmless id)."""
    defaults = {"key_id": "0123456789abcdef"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], defaults.get(m[1], "x1")), path)


def assert_error_shape(body: Any, code: str | None = None) -> None:
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str), error
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert isinstance(error["details"], list), error
    if code is not None:
        assert error["code"] == code, error


# -- fixtures and helpers --------------------------------------------------------------


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client without credentials: every test says which it presents."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as http:
        yield http


KeyMaker = Callable[..., Any]


@pytest.fixture
def make_key(runtime: Runtime) -> KeyMaker:
    async def make(*scopes: str) -> str:
        key = generate_key()
        await runtime.storage.keys.create_api_key(
            key.id, key.secret_hash, list(scopes), "auth test"
        )
        return key.token

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def open_stream(
    app: FastAPI, path: str, headers: dict[str, str] | None = None, query: str = ""
) -> Reply:
    """GET an event stream on the ASGI app directly, keep what arrives until the first body
    chunk, then disconnect (httpx's ASGI transport would wait for an endless stream)."""
    requested = False
    disconnect = asyncio.Event()
    first_chunk = asyncio.Event()
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if chunks[-1] or not message.get("more_body", False):
                first_chunk.set()

    scope = http_get_scope(path, query, headers)
    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(first_chunk.wait(), 10)
    finally:
        disconnect.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 5)
    response_headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return Reply(int(start["status"]), response_headers, b"".join(chunks))


async def call(
    app: FastAPI,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request to an endpoint of the table; the stream goes through `open_stream`."""
    if method == "GET" and path.endswith("/inbox/stream"):
        return await open_stream(app, path, headers)
    body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
    response = await client.request(method, path, headers=headers, json=body)
    return Reply(response.status_code, dict(response.headers), response.content)


def assert_401(reply: Reply, why: str) -> None:
    assert reply.status == 401, (why, reply.status, reply.body)
    assert_error_shape(reply.json(), "unauthorized")
    assert reply.headers.get("www-authenticate") == "Bearer", (why, reply.headers)


# -- the table ------------------------------------------------------------------------------


def test_route_table_is_complete_and_explicit() -> None:
    """A new endpoint fails here until it is given a rule in EXPECTED_RULES."""
    actual = route_scopes()
    missing = {k: v for k, v in actual.items() if k not in EXPECTED_RULES}
    stale = {k: v for k, v in EXPECTED_RULES.items() if k not in actual}
    wrong = {k: (actual[k], v) for k, v in EXPECTED_RULES.items() if k in actual and actual[k] != v}
    assert not missing, f"endpoints without an entry in EXPECTED_RULES: {missing}"
    assert not stale, f"EXPECTED_RULES lists endpoints that do not exist: {stale}"
    assert not wrong, f"(actual, expected) rules differ: {wrong}"
    assert actual == EXPECTED_RULES
    assert "none" not in actual.values()


def test_route_scopes_sees_every_route_of_the_app() -> None:
    """route_scopes() reads the route modules; the app must not serve anything else."""
    app = app_without_runtime()
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented == set(EXPECTED_RULES)
    # Besides the included routers, only the documentation pages and their assets.
    own = {r.path for r in app.routes if isinstance(r, Route | APIRoute | Mount)}
    assert own == {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs/assets"}
    included = [r for r in app.routes if not isinstance(r, Route | APIRoute | Mount)]
    assert len(included) == len(ROUTE_MODULES) + len(web.page_routers())


# -- API keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", PROTECTED, ids=_id)
async def test_missing_malformed_unknown_or_revoked_credentials_are_401(
    endpoint: tuple[str, str],
    app: FastAPI,
    client: httpx.AsyncClient,
    make_key: KeyMaker,
    admin_key: str,
) -> None:
    method, template = endpoint
    path = concrete(template)
    good = generate_key()
    made = await make_key("admin")
    wrong_secret = made.removesuffix(secret_of(made)) + good.secret
    revoked = await make_key("admin")
    revoked_id = revoked.split("_")[1]
    revoke = await client.delete(f"/v1/keys/{revoked_id}", headers=bearer(admin_key))
    assert revoke.status_code == 204
    cases: dict[str, dict[str, str]] = {
        "missing": {},
        "basic scheme": {"Authorization": "Basic x"},
        "bearer without a value": {"Authorization": "Bearer"},
        "bearer blank": {"Authorization": "Bearer    "},
        "not a key": {"Authorization": "Bearer hk_bad"},
        "unknown key id": bearer(good.token),
        "wrong secret": {"Authorization": f"Bearer {wrong_secret}"},
        "revoked": bearer(revoked),
    }
    for why, headers in cases.items():
        assert_401(await call(app, client, method, path, headers), why)
    # The control: the same call with a good key gets past authentication.
    passed = await call(app, client, method, path, bearer(admin_key))
    assert passed.status not in (401, 403), passed


@pytest.mark.parametrize("endpoint", PROTECTED, ids=_id)
async def test_each_scope_is_admitted_or_forbidden_by_the_rule(
    endpoint: tuple[str, str], app: FastAPI, client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    method, template = endpoint
    path = concrete(template)
    allowed = ALLOWED_SCOPES[_base_rule(EXPECTED_RULES[endpoint])]
    # A key without any scope (the store allows it; the API refuses to make one) and each
    # single-scope key.
    for scopes in [(), *((s,) for s in SCOPES)]:
        reply = await call(app, client, method, path, bearer(await make_key(*scopes)))
        if set(scopes) & allowed:
            assert reply.status not in (401, 403), (scopes, reply)
        else:
            assert reply.status == 403, (scopes, reply)
            assert_error_shape(reply.json(), "forbidden")


async def test_every_rule_has_a_scope_it_refuses() -> None:
    """`read` admits every scope, so only a scope-less key is refused there; every other
    rule refuses some real scope (that is what the parametrized test exercises)."""
    for rule in ("admin", "send", "manage"):
        assert set(SCOPES) - ALLOWED_SCOPES[rule]
    assert set(SCOPES) == ALLOWED_SCOPES["read"]


async def test_keys_are_compared_in_constant_time(
    client: httpx.AsyncClient, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = hmac.compare_digest
    compared: list[tuple[Any, Any]] = []

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("herald.security.hmac.compare_digest", spy)
    key = await make_key("read")
    ok = await client.get("/v1/categories", headers=bearer(key))
    assert ok.status_code == 200
    assert len(compared) == 1
    wrong = key[: -len(secret_of(key))] + generate_key().secret
    refused = await client.get("/v1/categories", headers=bearer(wrong))
    assert refused.status_code == 401
    assert len(compared) == 2, "a wrong secret for a known id must go through compare_digest"
    assert herald.security.secret_matches("ab", "ab")
    assert len(compared) == 3
    assert not herald.security.secret_matches("ab", "ac")
    assert len(compared) == 4


async def test_api_keys_never_reach_the_logs(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_key: KeyMaker,
    admin_key: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    read_key = await make_key("read")
    revoked = await make_key("admin")
    secrets = [secret_of(k) for k in (admin_key, read_key, revoked)]
    with structlog.testing.capture_logs() as events:
        await client.delete(f"/v1/keys/{revoked.split('_')[1]}", headers=bearer(admin_key))
        await client.put("/v1/users/u1", json={}, headers=bearer(admin_key))
        await client.post("/v1/keys", json={"scopes": ["read"]}, headers=bearer(admin_key))
        await client.get("/v1/users/u1", headers=bearer(read_key))
        await client.put("/v1/users/u2", json={}, headers=bearer(read_key))  # 403
        await client.get("/v1/users/u1", headers=bearer(revoked))  # 401
        await client.get("/v1/users/u1", headers={"Authorization": f"Basic {admin_key}"})
        in_url = await client.get("/v1/users/u1/inbox", params={"token": read_key})
        assert in_url.status_code == 401
        await open_stream(app, "/v1/users/u1/inbox/stream", query=f"token={revoked}")
        # A call that certainly logs (a refused webhook), carrying a key where one might
        # be copied into a log line: the header, the query and the body.
        refused = await client.post(
            f"/v1/webhooks/twilio?key={admin_key}",
            content=f"api_key={admin_key}",
            headers={**bearer(admin_key), "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert refused.status_code == 401
    captured = capsys.readouterr()
    # httpx's own request lines are this test's client talking, not Herald.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(
        [
            captured.out,
            captured.err,
            *(f"{r.getMessage()} {r.args!r} {r.exc_text}" for r in records),
            *(repr(event) for event in events),
        ]
    )
    assert "webhook refused" in logged, "the capture is not working"
    for secret in secrets:
        assert secret not in logged


# -- inbox tokens -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inboxes:
    a_token: str
    a_item: str
    b_item: str


@pytest.fixture
async def inboxes(runtime: Runtime, client: httpx.AsyncClient, admin_key: str) -> Inboxes:
    for user in ("alice", "bob"):
        created = await client.put(f"/v1/users/{user}", json={}, headers=bearer(admin_key))
        assert created.status_code == 201
    now = runtime.clock.now()
    items = [
        InboxItem(new_id(), user, new_id(), new_id(), "default", "hi", "there", {}, None, now)
        for user in ("alice", "bob")
    ]
    await runtime.storage.inbox.insert(items)
    issued = await client.post("/v1/users/alice/inbox-token", headers=bearer(admin_key))
    assert issued.status_code == 200
    body = issued.json()
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert now < expires_at <= now + timedelta(days=1)
    return Inboxes(body["token"], items[0].id, items[1].id)


async def test_an_inbox_token_opens_its_own_inbox(
    app: FastAPI, client: httpx.AsyncClient, inboxes: Inboxes
) -> None:
    auth = bearer(inboxes.a_token)
    listed = await client.get("/v1/users/alice/inbox", headers=auth)
    assert listed.status_code == 200
    assert [i["id"] for i in listed.json()["items"]] == [inboxes.a_item]
    assert listed.json()["unread_count"] == 1
    marked = await client.post(f"/v1/users/alice/inbox/{inboxes.a_item}/read", headers=auth)
    assert marked.status_code == 204
    assert (await client.post("/v1/users/alice/inbox/read-all", headers=auth)).json() == {
        "marked": 0
    }
    # The user's own item id under the other user's path is not found, not marked.
    crossed = await client.post(f"/v1/users/alice/inbox/{inboxes.b_item}/read", headers=auth)
    assert crossed.status_code == 404
    for stream in (
        await open_stream(app, "/v1/users/alice/inbox/stream", auth),
        await open_stream(app, "/v1/users/alice/inbox/stream", query=f"token={inboxes.a_token}"),
    ):
        assert stream.status == 200, stream
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.body.startswith(b": connected")


async def test_an_inbox_token_cannot_touch_another_users_inbox(
    app: FastAPI, client: httpx.AsyncClient, inboxes: Inboxes, runtime: Runtime
) -> None:
    auth = bearer(inboxes.a_token)
    replies = {
        "list": await client.get("/v1/users/bob/inbox", headers=auth),
        "list ?token": await client.get("/v1/users/bob/inbox", params={"token": inboxes.a_token}),
        "mark one": await client.post(f"/v1/users/bob/inbox/{inboxes.b_item}/read", headers=auth),
        "mark all": await client.post("/v1/users/bob/inbox/read-all", headers=auth),
    }
    streams = {
        "stream": await open_stream(app, "/v1/users/bob/inbox/stream", auth),
        "stream ?token": await open_stream(
            app, "/v1/users/bob/inbox/stream", query=f"token={inboxes.a_token}"
        ),
    }
    for why, response in replies.items():
        assert response.status_code == 403, (why, response.text)
        assert_error_shape(response.json(), "forbidden")
    for why, reply in streams.items():
        assert reply.status == 403, (why, reply)
        assert_error_shape(reply.json(), "forbidden")
    page, unread = await runtime.storage.inbox.page("bob", 10, None, False)
    assert unread == 1
    assert page.items[0].read_at is None


async def test_expired_tampered_or_foreign_inbox_tokens_are_401(
    app: FastAPI, client: httpx.AsyncClient, inboxes: Inboxes, runtime: Runtime
) -> None:
    now = runtime.clock.now()
    header, payload, signature = inboxes.a_token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    bad_tokens = {
        "expired": runtime.signer.sign("inbox", "alice", now - timedelta(seconds=1)),
        "tampered signature": f"{header}.{payload}.{flipped}",
        "tampered payload": f"{header}.{_claims(sub='bob', exp=now + timedelta(hours=1))}"
        f".{signature}",
        "another secret": Signer("not the deployment's secret, though as long").sign(
            "inbox", "alice", now + timedelta(hours=1)
        ),
        "another purpose": runtime.signer.sign("unsubscribe", "alice", now + timedelta(hours=1)),
        "garbage": "not-a-token",
        # Validly signed, malformed claims (a 500 once: `exp` was compared as it came).
        "exp not a number": runtime.signer.sign("inbox", "alice", now, exp="tomorrow"),
        "exp a bool": runtime.signer.sign("inbox", "alice", now, exp=True),
        "exp infinite": runtime.signer.sign("inbox", "alice", now, exp=float("inf")),
        "exp beyond a datetime": runtime.signer.sign("inbox", "alice", now, exp=10**20),
        "sub not a string": runtime.signer.sign(
            "inbox", "alice", now + timedelta(hours=1), sub=["alice"]
        ),
    }
    for why, token in bad_tokens.items():
        assert_401(await call(app, client, "GET", "/v1/users/alice/inbox", bearer(token)), why)
        assert_401(
            await call(app, client, "POST", "/v1/users/alice/inbox/read-all", bearer(token)), why
        )
        assert_401(await open_stream(app, "/v1/users/alice/inbox/stream", bearer(token)), why)
        assert_401(
            await open_stream(app, "/v1/users/alice/inbox/stream", query=f"token={token}"), why
        )
    missing = await open_stream(app, "/v1/users/alice/inbox/stream")
    assert_401(missing, "no token at all")


def _claims(**claims: Any) -> str:
    """A base64url JWT payload (what a tamperer would swap in)."""
    values = {
        "pur": "inbox",
        **{k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in claims.items()},
    }
    return base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()


async def test_api_keys_are_not_accepted_in_the_url(
    app: FastAPI, client: httpx.AsyncClient, inboxes: Inboxes, admin_key: str
) -> None:
    """?token= exists for the browser's EventSource and inbox tokens; an API key there would
    end up in proxy and browser logs, so it is refused even when it is valid."""
    listed = await client.get("/v1/users/alice/inbox", params={"token": admin_key})
    assert_401(Reply(listed.status_code, dict(listed.headers), listed.content), "list")
    assert_401(
        await open_stream(app, "/v1/users/alice/inbox/stream", query=f"token={admin_key}"),
        "stream",
    )
    assert (await client.get("/v1/users/alice/inbox", headers=bearer(admin_key))).is_success


async def test_an_inbox_token_opens_nothing_but_the_inbox(
    app: FastAPI, client: httpx.AsyncClient, inboxes: Inboxes
) -> None:
    for method, template in NON_INBOX:
        path = concrete(template, user_id="alice")
        for headers in (bearer(inboxes.a_token), None):
            if headers is None:
                # The ?token= form is for the stream only; elsewhere it is no credential.
                path_with_token = f"{path}?token={inboxes.a_token}"
                reply = await call(app, client, method, path_with_token)
            else:
                reply = await call(app, client, method, path, headers)
            assert_401(reply, f"{method} {template}")


def test_inbox_tokens_expire() -> None:
    signer = Signer("a deployment secret of at least 32 bytes")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    token, expires_at = signer.inbox_token("alice", now, timedelta(hours=12))
    assert expires_at == now + timedelta(hours=12)
    assert signer.verify("inbox", token, expires_at)["sub"] == "alice"
    with pytest.raises(herald.security.TokenInvalid, match="expired"):
        signer.verify("inbox", token, expires_at + timedelta(seconds=1))
