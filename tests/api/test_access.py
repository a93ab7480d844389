"""One access line per request (route template, status, duration, key id, never the
secret), HTTP metrics by route, and an unexpected error answered as one 500 that is logged
once and never escapes the app (uvicorn would log it again as a bare traceback)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from structlog.testing import capture_logs

from herald.api.app import create_app
from herald.api.routing import HeraldRoute
from herald.metrics import METRICS
from herald.runtime import Runtime
from herald.security import key_from_secret


@pytest.fixture
async def client_with_a_bug(runtime: Runtime, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime)

    async def broken() -> None:
        raise RuntimeError("a bug\nover two lines")

    app.router.add_api_route("/v1/broken", broken, route_class_override=HeraldRoute)
    transport = httpx.ASGITransport(app=app)  # raises whatever escapes the app
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://herald.test",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as client:
        yield client


async def test_each_request_has_one_access_line_without_the_secret(
    api: httpx.AsyncClient, admin_key: str
) -> None:
    with capture_logs() as events:
        response = await api.get("/v1/users/nobody-here")
    assert response.status_code == 404
    (line,) = [e for e in events if e["event"] == "request"]
    presented = key_from_secret(admin_key)
    assert presented is not None
    assert line["method"] == "GET"
    assert line["route"] == "/v1/users/{user_id}"
    assert line["status"] == 404
    assert line["key_id"] == presented.id
    assert line["duration_ms"] >= 0
    assert presented.secret not in repr(events)


async def test_requests_are_counted_by_route_template(api: httpx.AsyncClient) -> None:
    counter = METRICS.http_requests.labels("GET", "/v1/users/{user_id}", "404")
    before = counter._value.get()
    for user in ("a", "b", "c"):
        await api.get(f"/v1/users/{user}")
    assert counter._value.get() == before + 3


async def test_a_request_no_route_knows_has_one_label(api: httpx.AsyncClient) -> None:
    with capture_logs() as events:
        assert (await api.get("/v1/no/such/thing")).status_code == 404
    assert [e["route"] for e in events if e["event"] == "request"] == ["unmatched"]


@pytest.mark.expect_errors
async def test_an_unexpected_error_is_one_500_logged_once(
    client_with_a_bug: httpx.AsyncClient,
) -> None:
    with capture_logs() as events:
        response = await client_with_a_bug.get("/v1/broken")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    errors = [e for e in events if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["unhandled error"]
    assert isinstance(errors[0]["exc_info"], RuntimeError)
    (line,) = [e for e in events if e["event"] == "request"]
    assert (line["route"], line["status"]) == ("/v1/broken", 500)
