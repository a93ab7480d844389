"""`herald serve` as a user runs it: one process, every role, configured by environment."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.herald import _truncate, secret_of
from tests.fixtures.sends import assert_sent_once, sandbox_rows_sync, sends_per_delivery
from tests.fixtures.serve import HeraldLauncher, HeraldProcess

ANDROID = "c2VydmVfdGVzdA:APA91bH" + "s" * 140
IOS = "cd" * 32


def setup_user(client: httpx.Client, user: str = "42") -> None:
    body = {"email": "ada@example.com", "phone": "+14155550100", "timezone": "UTC"}
    assert client.put(f"/v1/users/{user}", json=body).status_code == 201
    for device in ({"platform": "android", "token": ANDROID}, {"platform": "ios", "token": IOS}):
        assert client.post(f"/v1/users/{user}/devices", json=device).status_code == 201


def inbox_items_sync(client: httpx.Client, user: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/users/{user}/inbox", params=query).json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s; last: {last!r}")


def final_deliveries(
    client: httpx.Client, notification_id: str, count: int
) -> list[dict[str, Any]] | None:
    found = client.get(f"/v1/notifications/{notification_id}").json()["deliveries"]
    done = len(found) == count and not {"queued", "sending"} & {d["status"] for d in found}
    return found if done else None


async def read_sse(
    herald: HeraldProcess, user: str, token: str, ready: asyncio.Event
) -> dict[str, Any]:
    """Open the stream as a browser would (token in the query), set `ready` on its `ready`
    event and return the first event after it."""
    async with (
        httpx.AsyncClient(base_url=herald.url, timeout=30) as client,
        client.stream("GET", f"/v1/users/{user}/inbox/stream", params={"token": token}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(("event:", "data:", "id:")):
                name, _, value = line.partition(":")
                event[name] = value.strip()
            elif not line and event.get("event") == "ready":
                ready.set()
                event = {}
            elif not line and "data" in event:
                return {
                    "event": event["event"],
                    "id": event["id"],
                    "data": json.loads(event["data"]),
                }
    raise AssertionError("stream ended without an event")


async def stream_one_notification(herald: HeraldProcess, user: str = "42") -> dict[str, Any]:
    with herald.client() as client:
        token = client.post(f"/v1/users/{user}/inbox-token").json()["token"]
    ready = asyncio.Event()
    reader = asyncio.create_task(read_sse(herald, user, token, ready))
    await asyncio.wait_for(ready.wait(), 15)
    with herald.client() as client:
        client.post(
            "/v1/notifications", json={"user_id": user, "title": "Live", "channels": ["in_app"]}
        )
    return await asyncio.wait_for(reader, 30)


async def test_serve_delivers_streams_and_stops_cleanly(launch_herald: HeraldLauncher) -> None:
    herald = launch_herald("serve")
    with herald.client() as client:
        setup_user(client)
        accepted = client.post(
            "/v1/notifications",
            json={"user_id": "42", "title": "Paid", "body": "€12"},
            headers={"Idempotency-Key": "serve-1"},
        )
        assert accepted.status_code == 202
        again = client.post(
            "/v1/notifications",
            json={"user_id": "42", "title": "Paid", "body": "€12"},
            headers={"Idempotency-Key": "serve-1"},
        )
        assert (again.status_code, again.json()["id"]) == (200, accepted.json()["id"])
        found = wait_for(lambda: final_deliveries(client, accepted.json()["id"], 5))
        assert sorted(d["status"] for d in found) == ["delivered", "sent", "sent", "sent", "sent"]
        sandbox = client.get("/v1/sandbox/messages").json()["items"]
        assert sorted(m["channel"] for m in sandbox) == ["email", "push", "push", "sms"]
        inbox = client.get("/v1/users/42/inbox").json()["items"]
        assert_sent_once(sends_per_delivery(sandbox, inbox), expected={d["id"] for d in found})
        events = client.get(f"/v1/notifications/{accepted.json()['id']}/events").json()["items"]
        assert {e["status"] for e in events} == {"queued", "sending", "sent", "delivered"}
        assert client.get("/readyz").status_code == 200
        assert "herald_notifications_accepted_total 1.0" in client.get("/metrics").text
    event = await stream_one_notification(herald)
    assert event["event"] == "inbox"
    assert event["data"]["title"] == "Live"
    assert herald.stop() == 0
    output = herald.log_path.read_text()
    log = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = [line["event"] for line in log if "logger" not in line]  # Herald's own
    assert messages[:2] == ["herald starting", "ready"]
    assert messages[-1] == "stopped cleanly"
    assert secret_of(herald.key) not in output


def _get_healthz(connection: socket.socket) -> bytes:
    """One request on the open connection; the whole response (status line, headers and
    a Content-Length body), which may arrive in several segments."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            return received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("keepalive", "idle_seconds", "still_open"),
    [
        # Longer than httpx's and most pools' 5 s expiry: the server must not close first,
        # or the client's next request on the connection races the close (a reset).
        (None, 6.0, True),
        ("1", 2.5, False),
    ],
)
def test_the_api_keeps_idle_connections_open_for_http_keepalive_seconds(
    launch_herald: HeraldLauncher, keepalive: str | None, idle_seconds: float, still_open: bool
) -> None:
    env = {"HERALD_HTTP_KEEPALIVE_SECONDS": keepalive} if keepalive else {}
    herald = launch_herald("serve", env=env)
    assert herald.port is not None
    with socket.create_connection(("127.0.0.1", herald.port), timeout=10) as connection:
        assert _get_healthz(connection).startswith(b"HTTP/1.1 200")
        time.sleep(idle_seconds)
        if still_open:
            assert _get_healthz(connection).startswith(b"HTTP/1.1 200")
        else:
            assert connection.recv(1) == b""  # the server closed it


def test_serve_after_sigkill_sends_what_it_had_accepted(launch_herald: HeraldLauncher) -> None:
    """The in-process bus dies with the process; the outbox and the restart sweep bring
    back every accepted notification, and none is sent twice."""
    herald = launch_herald("serve", env={"HERALD_LEASE_SECONDS": "2"})
    with herald.client() as client:
        setup_user(client)
        items = [
            {
                "idempotency_key": f"k{n}",
                "user_id": "42",
                "title": f"#{n}",
                "channels": ["push", "in_app"],
            }
            for n in range(300)
        ]
        response = client.post("/v1/notifications/batch", json={"notifications": items})
        assert response.json()["accepted"] == 300
    herald.kill()
    restarted = launch_herald("serve", env={"HERALD_LEASE_SECONDS": "2"})
    with restarted.client() as client:

        def all_done() -> bool:  # 300 in the inbox and 600 pushes (two devices each)
            inbox = client.get("/v1/users/42/inbox").json()
            pushed = {row["delivery_id"] for row in sandbox_rows_sync(client)}
            return bool(inbox["unread_count"] == 300 and len(pushed) == 600)

        wait_for(all_done, timeout=90)
        counts = sends_per_delivery(sandbox_rows_sync(client), inbox_items_sync(client, "42"))
    assert restarted.stop() == 0
    with sqlite3.connect(Path(herald.env["HERALD_DATA_DIR"]) / "herald.db") as db:
        # Each claim counts an attempt on the row (a claim writes no log event).
        claims = dict(db.execute("SELECT id, attempts FROM deliveries").fetchall())
    deliveries = set(claims)
    assert len(deliveries) == 900  # 300 x (2 push devices + in_app)
    # Once each; a delivery the killed process had handed over before dying is
    # at_least_once and may go out again after its lease, at most once per claim.
    assert_sent_once(counts, expected=deliveries, may_repeat=claims)


@pytest.mark.production
@pytest.mark.postgres
@pytest.mark.kafka
async def test_inbox_stream_reaches_the_browser_across_processes(
    launch_herald: HeraldLauncher,
    herald_env: dict[str, str],
    postgres_test_url: str,
    kafka_bootstrap: str,
) -> None:
    """The worker that stores the item and the API process holding the stream are
    different processes: PostgreSQL LISTEN/NOTIFY carries the event between them."""
    await _truncate(postgres_test_url)
    herald_env.update(
        HERALD_DATABASE_URL=postgres_test_url,
        HERALD_KAFKA_BOOTSTRAP=kafka_bootstrap,
        HERALD_KAFKA_TOPIC_PREFIX=f"sse{uuid.uuid4().hex[:8]}.",
        HERALD_KAFKA_PARTITIONS="2",
    )
    api = launch_herald("api")
    for role in (("relay",), ("router",), ("worker", "--channel", "in_app")):
        launch_herald(*role)
    with api.client() as client:
        assert client.put("/v1/users/42", json={"timezone": "UTC"}).status_code == 201
    event = await stream_one_notification(api)
    assert event["data"]["title"] == "Live"
