"""The live inbox stream ends when the inbox token that opened it expires (on the
deployment's clock, here a FakeClock): nothing arrives after that moment."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from herald.api.app import create_app
from herald.api.routes.inbox import INBOX_TOKEN_TTL
from herald.clock import FakeClock
from herald.runtime import Runtime
from herald.storage import InboxItem
from tests.fixtures.asgi import http_get_scope


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class OpenStream:
    """An SSE response read chunk by chunk straight from the ASGI app."""

    task: asyncio.Task[None]
    chunks: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    disconnect: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def until(self, text: bytes) -> None:
        async with asyncio.timeout(10):
            while text not in self.body:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def open_stream(app: FastAPI, path: str, query: str) -> AsyncIterator[OpenStream]:
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await stream.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            stream.chunks.append(message.get("body", b""))
            stream.arrived.set()

    scope = http_get_scope(path, query)
    stream = OpenStream(asyncio.create_task(app(scope, receive, send)))  # type: ignore[arg-type]
    try:
        yield stream
    finally:
        stream.disconnect.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(stream.task, 5)


async def test_a_stream_ends_when_its_inbox_token_expires(
    runtime: Runtime, api: httpx.AsyncClient, clock: FakeClock
) -> None:
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    token = (await api.post("/v1/users/42/inbox-token")).json()["token"]
    app = create_app(runtime)

    async with open_stream(app, "/v1/users/42/inbox/stream", f"token={token}") as stream:
        await stream.until(b"event: ready")  # subscribed: what is published now comes
        await runtime.hub.publish("42", {"id": "before-expiry"})
        await stream.until(b"before-expiry")

        clock.advance((INBOX_TOKEN_TTL + timedelta(seconds=1)).total_seconds())
        await runtime.hub.publish("42", {"id": "after-expiry"})
        await asyncio.wait_for(stream.task, 10)  # the stream ended by itself

    assert b"after-expiry" not in stream.body
    assert stream.body.endswith(b'event: expired\ndata: {"reason": "inbox token expired"}\n\n')


async def test_a_reconnecting_stream_first_gets_what_it_missed(
    runtime: Runtime, api: httpx.AsyncClient, clock: FakeClock
) -> None:
    """The event id of the last item seen (Last-Event-ID, or last_event_id in the URL of
    a new stream): the items stored after it come first, then live ones, none twice."""
    await api.put("/v1/users/42", json={"timezone": "UTC"})
    token = (await api.post("/v1/users/42/inbox-token")).json()["token"]
    items = []
    for n in range(3):
        items.append(
            InboxItem(
                f"item-{n}",
                "42",
                f"d{n}",
                f"n{n}",
                "default",
                f"title {n}",
                None,
                {},
                None,
                clock.now(),
                1,
            )
        )
        clock.advance(1)
    await runtime.storage.inbox.insert(items)
    app = create_app(runtime)
    query = f"token={token}&last_event_id=item-0"
    async with open_stream(app, "/v1/users/42/inbox/stream", query) as stream:
        await stream.until(b"id: item-2")
        await runtime.hub.publish("42", {"id": "item-2"})  # live too: not sent again
        await runtime.hub.publish("42", {"id": "item-3"})
        await stream.until(b"id: item-3")
    body = stream.body
    assert b"id: item-0" not in body
    assert body.index(b"id: item-1") < body.index(b"id: item-2") < body.index(b"id: item-3")
    assert body.count(b"id: item-2") == 1
