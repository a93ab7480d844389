"""The console over HTTP: sessions, CSRF, scopes, headers, escaping and every page."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
import pytest

from herald.api.app import create_app
from herald.clock import FakeClock
from herald.runtime import Runtime
from herald.web.console import router as console_router
from herald.web.session import SESSION_TTL
from tests.fixtures.console import csrf_of, make_key, sign_in
from tests.fixtures.herald import Pipeline, eventually

PAGES = (
    "/console/notifications",
    "/console/users",
    "/console/broadcasts",
    "/console/workflow-runs",
    "/console/providers",
    "/console/dead-letters",
    "/console/suppressions",
    "/console/inbox-demo",
)


async def test_without_a_session_every_page_sends_to_sign_in(
    browser_client: httpx.AsyncClient,
) -> None:
    for path in PAGES:
        response = await browser_client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/sign-in?next=")


def test_every_console_route_asks_for_a_session() -> None:
    """Each route's code starts from _viewer or _actor (which check the session), except
    the sign-in pages and the redirect home."""
    import inspect

    open_routes = {"/console", "/console/sign-in"}
    for route in console_router.routes:
        path = getattr(route, "path", "")
        if path in open_routes:
            continue
        source = inspect.getsource(route.endpoint)  # type: ignore[attr-defined]
        assert "await _viewer(request)" in source or "await _actor(request)" in source, path


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(
    runtime: Runtime, browser_client: httpx.AsyncClient
) -> None:
    response = await sign_in(browser_client, await make_key(runtime, "read"))
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert "Secure" not in cookie  # plain http here; https gets Secure
    page = await browser_client.get("/console/notifications")
    assert page.status_code == 200
    out = await browser_client.post("/console/sign-out", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert (await browser_client.get("/console/notifications")).status_code == 303


async def test_a_wrong_key_is_refused_on_the_page(
    runtime: Runtime, browser_client: httpx.AsyncClient
) -> None:
    response = await sign_in(browser_client, "hk_nope_nope")
    assert response.status_code == 401
    assert "not valid" in response.text


async def test_forms_without_the_csrf_token_are_refused(console: httpx.AsyncClient) -> None:
    for path in ("/console/dead-letters/replay-all", "/console/sign-out", "/console/suppressions"):
        response = await console.post(path, data={"channel": "email", "address": "x@y.z"})
        assert response.status_code == 403, path
        assert "CSRF" in response.text
    bad = await console.post("/console/dead-letters/replay-all", data={"csrf": "forged"})
    assert bad.status_code == 403
    page = await console.get("/console/suppressions")
    assert "x@y.z" not in page.text  # nothing was suppressed


async def test_a_read_key_sees_but_cannot_act(
    runtime: Runtime, browser_client: httpx.AsyncClient
) -> None:
    await sign_in(browser_client, await make_key(runtime, "read"))
    page = await browser_client.get("/console/suppressions")
    assert page.status_code == 200
    assert 'action="/console/suppressions"' not in page.text  # no form to act with
    response = await browser_client.post(
        "/console/suppressions",
        data={"csrf": csrf_of(page.text), "channel": "email", "address": "a@b.c"},
    )
    assert response.status_code == 403
    assert "manage or admin" in response.text


async def test_a_revoked_key_ends_its_session(
    runtime: Runtime, browser_client: httpx.AsyncClient
) -> None:
    key = await make_key(runtime, "read")
    await sign_in(browser_client, key)
    key_id = key.split("_")[1]
    await runtime.storage.keys.revoke_api_key(key_id)
    assert (await browser_client.get("/console/notifications")).status_code == 303


async def test_pages_carry_the_security_headers(console: httpx.AsyncClient) -> None:
    for path in (*PAGES, "/console/sign-in", "/static/herald-inbox.js", "/preferences"):
        response = await console.get(path)
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


async def test_user_text_is_escaped_and_the_timeline_is_shown(
    api: httpx.AsyncClient, console: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/42", json={"email": "ada@example.com", "timezone": "UTC"})
    title = "<script>alert(1)</script>"
    created = await api.post(
        "/v1/notifications", json={"user_id": "42", "title": title, "channels": ["email"]}
    )
    notification_id = created.json()["id"]

    async def sent() -> bool:
        body = (await api.get(f"/v1/notifications/{notification_id}")).json()
        return bool(body["deliveries"]) and body["deliveries"][0]["status"] == "sent"

    await eventually(sent)
    listing = await console.get("/console/notifications", params={"user_id": "42"})
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text
    assert "<script>alert" not in listing.text
    detail = await console.get(f"/console/notifications/{notification_id}")
    assert "&lt;script&gt;" in detail.text
    assert "a***@example.com" in detail.text  # the address is masked
    assert 'class="t-sent"' in detail.text  # the timeline has the send
    for path in ("/console/users/42", "/console/providers"):
        page = await console.get(path)
        assert page.status_code == 200, path
    assert "<svg" in (await console.get("/console/providers")).text


async def test_suppressions_are_added_and_lifted(console: httpx.AsyncClient) -> None:
    page = await console.get("/console/suppressions")
    added = await console.post(
        "/console/suppressions",
        data={"csrf": csrf_of(page.text), "channel": "email", "address": "bounce@example.com"},
    )
    assert added.status_code == 303
    listed = await console.get("/console/suppressions")
    assert "bounce@example.com" in listed.text
    lift = listed.text.split('action="/console/suppressions/')[1].split('"')[0]
    lifted = await console.post(
        f"/console/suppressions/{lift}", data={"csrf": csrf_of(listed.text)}
    )
    assert lifted.status_code == 303
    assert "bounce@example.com" not in (await console.get("/console/suppressions")).text


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/v1/keys", "/console\\x"]
)
async def test_sign_in_never_redirects_off_the_console(
    runtime: Runtime, browser_client: httpx.AsyncClient, target: str
) -> None:
    page = await browser_client.get("/console/sign-in")
    response = await browser_client.post(
        "/console/sign-in",
        data={
            "key": await make_key(runtime, "read"),
            "csrf": csrf_of(page.text),
            "next": target,
        },
    )
    assert response.headers["location"] == "/console/notifications"


class TestExpiry:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    async def test_a_session_ends_after_eight_hours(
        self, runtime: Runtime, browser_client: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        await sign_in(browser_client, await make_key(runtime, "read"))
        clock.advance((SESSION_TTL - timedelta(seconds=1)).total_seconds())
        assert (await browser_client.get("/console/notifications")).status_code == 200
        clock.advance(2)
        assert (await browser_client.get("/console/notifications")).status_code == 303


async def test_over_https_the_cookie_is_secure(runtime: Runtime) -> None:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="https://herald.test") as client:
        response = await sign_in(client, await make_key(runtime, "read"))
    assert "Secure" in response.headers["set-cookie"]


async def test_a_broadcast_is_followed_and_cancelled(
    api: httpx.AsyncClient, console: httpx.AsyncClient
) -> None:
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    await api.put("/v1/users/42/topics/storms")
    created = await api.post(
        "/v1/broadcasts",
        json={"topic": "storms", "notification": {"title": "Storm <b>warning</b>"}},
        headers={"Idempotency-Key": "b1"},
    )
    broadcast_id = created.json()["id"]
    listing = await console.get("/console/broadcasts")
    assert "Storm &lt;b&gt;warning&lt;/b&gt;" in listing.text
    page = await console.get(f"/console/broadcasts/{broadcast_id}")
    assert 'data-live="1"' in page.text  # no pipeline runs here: it is not settled
    cancelled = await console.post(
        f"/console/broadcasts/{broadcast_id}/cancel", data={"csrf": csrf_of(page.text)}
    )
    assert cancelled.status_code == 303
    assert (await api.get(f"/v1/broadcasts/{broadcast_id}")).json()["state"] == "cancelled"
    after = await console.get(f"/console/broadcasts/{broadcast_id}")
    assert "Cancelled:" in after.text  # said once, after the action
    assert "Cancel the broadcast" not in after.text


SEND_THEN_WAIT = {
    "category": "orders",
    "steps": [
        {"id": "hello", "type": "send", "channels": ["in_app"]},
        {"id": "wait", "type": "wait", "event": "paid", "timeout_seconds": 3600},
        {"id": "thanks", "type": "send", "channels": ["in_app"]},
    ],
}


async def start_run(api: httpx.AsyncClient, definition: dict[str, object]) -> str:
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    assert (await api.put("/v1/workflows/shipped", json=definition)).status_code in (200, 201)
    triggered = await api.post(
        "/v1/workflows/shipped/trigger", json={"user_id": "42", "title": "Order <b>1</b>"}
    )
    assert triggered.status_code == 202, triggered.text
    return str(triggered.json()["id"])


async def test_a_workflow_run_is_listed_shown_with_its_sends_and_cancelled(
    api: httpx.AsyncClient, console: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    run_id = await start_run(api, SEND_THEN_WAIT)

    async def waiting() -> dict[str, object] | None:
        run = (await api.get(f"/v1/workflow-runs/{run_id}")).json()
        return run if run["steps"][1]["status"] == "waiting" else None

    run = await eventually(waiting)
    notification_id = run["steps"][0]["notification_id"]  # type: ignore[index]
    listing = await console.get("/console/workflow-runs")
    assert f'href="/console/workflow-runs/{run_id}"' in listing.text
    assert "shipped" in listing.text
    page = await console.get(f"/console/workflow-runs/{run_id}")
    assert page.status_code == 200
    assert f'href="/console/notifications/{notification_id}"' in page.text
    assert 'data-step="wait"' in page.text
    assert 'data-live="1"' in page.text
    detail = await console.get(f"/console/notifications/{notification_id}")
    assert f'href="/console/workflow-runs/{run_id}"' in detail.text
    assert "<dt>Workflow step</dt><dd>hello</dd>" in detail.text

    cancelled = await console.post(
        f"/console/workflow-runs/{run_id}/cancel", data={"csrf": csrf_of(page.text)}
    )
    assert cancelled.status_code == 303
    assert (await api.get(f"/v1/workflow-runs/{run_id}")).json()["status"] == "cancelled"
    after = await console.get(f"/console/workflow-runs/{run_id}")
    assert "Cancelled: none of the run" in after.text  # said once, after the action
    assert "Cancel the run" not in after.text
    assert 'data-live="1"' not in after.text
    # The stream of a run that has ended says so once and ends.
    stream = await console.get(f"/console/workflow-runs/{run_id}/progress")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.count("event: progress") == 1
    assert '"final":true' in stream.text
    assert '"status":"cancelled"' in stream.text


async def test_a_read_key_cannot_cancel_a_run(
    api: httpx.AsyncClient, runtime: Runtime, browser_client: httpx.AsyncClient
) -> None:
    run_id = await start_run(api, SEND_THEN_WAIT)
    await sign_in(browser_client, await make_key(runtime, "read"))
    page = await browser_client.get(f"/console/workflow-runs/{run_id}")
    assert "Cancel the run" not in page.text
    refused = await browser_client.post(
        f"/console/workflow-runs/{run_id}/cancel", data={"csrf": csrf_of(page.text)}
    )
    assert refused.status_code == 403
    assert (await api.get(f"/v1/workflow-runs/{run_id}")).json()["status"] == "running"


async def test_a_running_runs_stream_ends_when_the_server_stops(
    api: httpx.AsyncClient, runtime: Runtime, console: httpx.AsyncClient
) -> None:
    run_id = await start_run(api, SEND_THEN_WAIT)  # no pipeline: it stays running
    stream = asyncio.create_task(console.get(f"/console/workflow-runs/{run_id}/progress"))
    runtime.end_streams()
    response = await asyncio.wait_for(stream, 15)
    assert response.status_code == 200
    assert '"final":true' not in response.text


async def test_a_deliverys_engagement_is_shown_on_its_notification(
    api: httpx.AsyncClient, console: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/42", json={"email": "ada@example.com", "timezone": "UTC"})
    created = await api.post(
        "/v1/notifications", json={"user_id": "42", "title": "Hi", "channels": ["email"]}
    )
    notification_id = created.json()["id"]

    async def sent() -> dict[str, object] | None:
        body = (await api.get(f"/v1/notifications/{notification_id}")).json()
        deliveries = body["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["status"] == "sent" else None

    delivery = await eventually(sent)
    before = await console.get(f"/console/notifications/{notification_id}")
    assert "<dt>Opened</dt>" not in before.text
    for event in ("opened", "clicked"):
        report = await api.post(
            f"/v1/deliveries/{delivery['id']}/engagement", json={"event": event}
        )
        assert report.json()["first"] is True
    engaged = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"][0]
    page = await console.get(f"/console/notifications/{notification_id}")
    for name, field in (("Opened", "opened_at"), ("Clicked", "clicked_at")):
        shown = datetime.fromisoformat(engaged[field]).strftime("%Y-%m-%d %H:%M:%S")
        assert f"<dt>{name}</dt><dd>{shown}</dd>" in page.text
    assert "<dt>Read</dt>" not in page.text
    assert "<dt>Dismissed</dt>" not in page.text


async def test_a_provider_without_a_worker_here_says_where_its_circuit_is(
    runtime: Runtime, console: httpx.AsyncClient
) -> None:
    """Under `herald api` the circuits are in the worker processes: the page says so
    rather than showing a blank."""
    runtime.settings.rate_limits["elsewhere-provider"] = 5.0  # known here, sent elsewhere
    page = await console.get("/console/providers")
    row = page.text.split('<th scope="row">elsewhere-provider</th>')[1].split("</tr>")[0]
    assert ">in its workers</span>" in row
    assert "herald_provider_circuit_open" in page.text
    assert "docs/operations.md" in page.text
