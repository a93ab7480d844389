from collections.abc import AsyncIterator

import httpx
import pytest

from herald.runtime import Runtime
from tests.fixtures.activity import counting_round_trips, counting_statements

USER = {"email": "ada@example.com", "timezone": "UTC"}


@pytest.fixture
async def user(api: httpx.AsyncClient) -> str:
    await api.put("/v1/users/42", json=USER)
    return "42"


async def test_accept_returns_202_and_an_id(api: httpx.AsyncClient, user: str) -> None:
    response = await api.post("/v1/notifications", json={"user_id": user, "title": "Paid"})
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    stored = (await api.get(f"/v1/notifications/{response.json()['id']}")).json()
    assert (stored["user_id"], stored["title"], stored["priority"]) == (user, "Paid", "normal")


async def test_same_key_same_body_is_the_same_notification(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    body = {"user_id": user, "title": "Paid", "body": "€12"}
    first = await api.post("/v1/notifications", json=body, headers={"Idempotency-Key": "pay-1"})
    second = await api.post("/v1/notifications", json=body, headers={"Idempotency-Key": "pay-1"})
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    assert await runtime.storage.outbox.size() == 1


async def test_defaults_spelled_out_are_the_same_body(api: httpx.AsyncClient, user: str) -> None:
    first = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "x"}, headers={"Idempotency-Key": "k"}
    )
    second = await api.post(
        "/v1/notifications",
        json={"user_id": user, "title": "x", "priority": "normal", "category": "default"},
        headers={"Idempotency-Key": "k"},
    )
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


async def test_same_key_other_body_is_a_conflict(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    await api.post(
        "/v1/notifications", json={"user_id": user, "title": "a"}, headers={"Idempotency-Key": "k"}
    )
    response = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "b"}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert await runtime.storage.outbox.size() == 1


async def test_concurrent_replays_make_one_notification(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    import asyncio

    body = {"user_id": user, "title": "once"}
    responses = await asyncio.gather(
        *(
            api.post("/v1/notifications", json=body, headers={"Idempotency-Key": "race"})
            for _ in range(10)
        )
    )
    assert len({r.json()["id"] for r in responses}) == 1
    assert sorted(r.status_code for r in responses) == [200] * 9 + [202]
    assert await runtime.storage.outbox.size() == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"user_id": "42"}, 422, "needs a title"),
        ({"user_id": "42", "title": "x" * 257}, 422, "at most 256"),
        ({"user_id": "42", "title": "x", "channels": ["fax"]}, 422, "fax"),
        ({"user_id": "42", "title": "x", "channels": []}, 422, "at least 1"),
        ({"user_id": "42", "title": "x", "priority": "urgent"}, 422, "critical"),
        ({"user_id": "42", "title": "x", "ttl_seconds": 0}, 422, "greater than or equal to 1"),
        ({"user_id": "42", "title": "x", "send_at": "2026-01-01T09:00:00"}, 422, "time zone"),
        ({"user_id": "42", "title": "x", "data": {"blob": "y" * 9000}}, 422, "bytes as JSON"),
        ({"user_id": "nobody", "title": "x"}, 422, "user 'nobody' does not exist"),
        ({"user_id": "nobody", "template": "missing"}, 422, "user 'nobody' does not exist"),
        ({"user_id": "42", "title": "x", "template": "missing"}, 422, "does not exist"),
        ({"user_id": "42", "title": "x", "colour": "red"}, 422, "Extra inputs"),
    ],
)
async def test_bad_notifications_say_what_is_wrong(
    api: httpx.AsyncClient,
    user: str,
    runtime: Runtime,
    body: dict[str, object],
    status: int,
    words: str,
) -> None:
    response = await api.post("/v1/notifications", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"] or any(words in str(d) for d in error["details"]), error
    assert await runtime.storage.outbox.size() == 0


async def test_malformed_json_is_a_400(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/notifications", content=b'{"user_id": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


async def test_non_json_content_type_is_a_415(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/notifications",
        content=b"user_id=42",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


async def test_missing_content_type_is_read_as_json(api: httpx.AsyncClient, user: str) -> None:
    response = await api.post(
        "/v1/notifications",
        content=b'{"user_id": "42", "title": "x"}',
        headers={"Content-Type": ""},
    )
    assert response.status_code == 202


async def test_oversized_body_is_refused_before_it_is_read(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/notifications", content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_batch_accepts_each_item_on_its_own(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    items = [
        {"idempotency_key": "b1", "user_id": user, "title": "one"},
        {"idempotency_key": "b2", "user_id": user, "title": "two"},
        {"idempotency_key": "b3", "user_id": user},
        {"idempotency_key": "b4", "user_id": "ghost", "title": "x"},
        {"idempotency_key": "b1", "user_id": user, "title": "one"},
        {"idempotency_key": "b2", "user_id": user, "title": "changed"},
    ]
    response = await api.post("/v1/notifications/batch", json={"notifications": items})
    assert response.status_code == 200
    body = response.json()
    statuses = [item["status"] for item in body["items"]]
    assert statuses == ["accepted", "accepted", "rejected", "rejected", "duplicate", "rejected"]
    assert body["items"][4]["id"] == body["items"][0]["id"]
    assert body["items"][3]["error"]["code"] == "unknown_user"
    assert body["items"][5]["error"]["code"] == "idempotency_conflict"
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 1, 3)
    assert await runtime.storage.outbox.size() == 2


async def test_batch_over_the_limit_is_refused(api: httpx.AsyncClient, runtime: Runtime) -> None:
    items = [{"idempotency_key": f"k{i}", "user_id": "42", "title": "x"} for i in range(1001)]
    response = await api.post("/v1/notifications/batch", json={"notifications": items})
    assert response.status_code == 422
    assert "at most 1000" in response.json()["error"]["message"]
    assert await runtime.storage.outbox.size() == 0


async def test_unknown_notification_is_404(api: httpx.AsyncClient) -> None:
    for path in ("/v1/notifications/nope", "/v1/notifications/nope/events"):
        response = await api.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


async def test_template_that_does_not_render_is_refused_at_post(
    api: httpx.AsyncClient, user: str
) -> None:
    template = {
        "locales": {"en": {"push": {"title": "Hi {{ name }}", "body": "x"}}},
        "default_locale": "en",
    }
    assert (await api.put("/v1/templates/welcome", json=template)).status_code == 201
    response = await api.post("/v1/notifications", json={"user_id": user, "template": "welcome"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "template_error"
    assert "name" in error["message"]
    assert error["details"][0]["field"] == "locales.en.push.title"
    ok = await api.post(
        "/v1/notifications",
        json={"user_id": user, "template": "welcome", "variables": {"name": "Ada"}},
    )
    assert ok.status_code == 202


async def test_a_database_outage_is_a_503_with_retry_after(
    api: httpx.AsyncClient, user: str, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy.exc

    async def down(*_args: object, **_kwargs: object) -> None:
        raise sqlalchemy.exc.OperationalError("INSERT", {}, ConnectionRefusedError("restarting"))

    monkeypatch.setattr(runtime.storage.notifications, "accept", down)
    response = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "x"}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "unavailable"
    monkeypatch.undo()
    retried = await api.post(
        "/v1/notifications", json={"user_id": user, "title": "x"}, headers={"Idempotency-Key": "k"}
    )
    assert retried.status_code == 202


async def test_past_the_in_flight_limit_requests_are_shed(runtime: Runtime, admin_key: str) -> None:
    import asyncio

    from herald.api.app import create_app

    runtime.settings.api_max_in_flight = 2
    gate = asyncio.Event()
    entered = asyncio.Semaphore(0)
    original = runtime.storage.directory.list_templates

    async def slow() -> list[tuple[str, dict[str, object]]]:
        entered.release()
        await gate.wait()
        return await original()

    runtime.storage.directory.list_templates = slow  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=create_app(runtime))
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://h", headers=headers
    ) as client:
        held = [asyncio.create_task(client.get("/v1/templates")) for _ in range(2)]
        for _ in range(2):
            await asyncio.wait_for(entered.acquire(), 10)
        shed = await client.get("/v1/templates")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "overloaded"
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await client.get("/v1/templates")).status_code == 200


@pytest.fixture
async def senders(runtime: Runtime, user: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two callers, each with an API key of its own (scope send)."""
    from herald.api.app import create_app
    from herald.security import generate_key

    app = create_app(runtime)
    clients = []
    for name in ("tenant-a", "tenant-b"):
        key = generate_key()
        await runtime.storage.keys.create_api_key(key.id, key.secret_hash, ["send"], name)
        clients.append(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://herald.test",
                headers={"Authorization": f"Bearer {key.token}"},
            )
        )
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


async def _post_with_key(
    client: httpx.AsyncClient, kind: str, key: str, title: str
) -> tuple[int, str | None]:
    """(status, id) of one notification, batch item or broadcast under `key`."""
    if kind == "batch":
        item = {"idempotency_key": key, "user_id": "42", "title": title}
        response = await client.post("/v1/notifications/batch", json={"notifications": [item]})
        outcome = response.json()["items"][0]
        status = {"accepted": 202, "duplicate": 200}.get(outcome["status"], 409)
        return status, outcome.get("id")
    path, body = (
        ("/v1/broadcasts", {"user_ids": ["42"], "notification": {"title": title}})
        if kind == "broadcast"
        else ("/v1/notifications", {"user_id": "42", "title": title})
    )
    response = await client.post(path, json=body, headers={"Idempotency-Key": key})
    return response.status_code, response.json().get("id")


@pytest.mark.parametrize("kind", ["notification", "batch", "broadcast"])
async def test_idempotency_keys_are_each_api_keys_own(
    senders: list[httpx.AsyncClient], kind: str
) -> None:
    """Another API key's Idempotency-Key neither reveals its notification nor blocks the
    key: each key holder gets 202/200/409 within its own keys only."""
    a, b = senders
    status_a, id_a = await _post_with_key(a, kind, "order-1", "for a")
    status_b, id_b = await _post_with_key(b, kind, "order-1", "for b")
    assert (status_a, status_b) == (202, 202)
    assert id_a != id_b
    assert await _post_with_key(a, kind, "order-1", "for a") == (200, id_a)
    assert await _post_with_key(b, kind, "order-1", "for b") == (200, id_b)
    assert (await _post_with_key(a, kind, "order-1", "for b"))[0] == 409


async def test_an_accepted_notification_costs_one_statement(
    api: httpx.AsyncClient, user: str, runtime: Runtime
) -> None:
    """The user's existence is a condition of the accept's insert, not a read before it
    (a refused one costs the read-back that tells it from a replay); the API key is
    cached after its first use."""
    await api.post("/v1/notifications", json={"user_id": user, "title": "warm-up"})
    database = runtime.storage.database
    with counting_statements(database) as through_sqlalchemy:
        with counting_round_trips(database) as accept_trips:
            accepted = await api.post("/v1/notifications", json={"user_id": user, "title": "x"})
        with counting_round_trips(database) as refuse_trips:
            refused = await api.post("/v1/notifications", json={"user_id": "ghost", "title": "x"})
    assert (accepted.status_code, refused.status_code) == (202, 422)
    assert (len(accept_trips), len(refuse_trips), through_sqlalchemy) == (1, 2, [])
