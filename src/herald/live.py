"""Live fan-out of new inbox items to open event streams.

The local hub serves one process (the embedded default, or a worker and API in one
`herald serve`). Across processes on PostgreSQL, `PostgresHub` carries the same events over
LISTEN/NOTIFY, so a worker in one process reaches a browser connected to another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
import structlog

log = structlog.get_logger()
CHANNEL = "herald_inbox"
QUEUE_LIMIT = 100


class LiveHub(Protocol):
    async def publish(self, user_id: str, event: dict[str, Any]) -> None: ...

    def subscribe(
        self, user_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...

    async def close(self) -> None: ...


class LocalHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    def deliver(self, user_id: str, event: dict[str, Any]) -> None:
        for queue in self._subscribers.get(user_id, ()):
            if queue.full():  # a stalled reader loses the oldest, never blocks workers
                queue.get_nowait()
            queue.put_nowait(event)

    async def publish(self, user_id: str, event: dict[str, Any]) -> None:
        self.deliver(user_id, event)

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.setdefault(user_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(user_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[user_id]

    async def close(self) -> None:
        self._subscribers.clear()


class PostgresHub(LocalHub):
    """NOTIFY on publish; one LISTEN connection per process feeds the local subscribers.
    Payloads over PostgreSQL's 8000-byte NOTIFY limit carry only the item id."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self._listener: Any = None
        self._publisher: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        import asyncpg

        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._on_notify)
        self._publisher = await asyncpg.connect(self.dsn)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = orjson.loads(payload)
            self.deliver(message["user_id"], message["event"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored a malformed inbox notification")

    async def publish(self, user_id: str, event: dict[str, Any]) -> None:
        payload = orjson.dumps({"user_id": user_id, "event": event}).decode()
        if len(payload.encode()) > 7900:
            payload = orjson.dumps({"user_id": user_id, "event": {"id": event.get("id")}}).decode()
        async with self._lock:
            await self._publisher.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    async def close(self) -> None:
        for connection in (self._listener, self._publisher):
            if connection is not None:
                await connection.close()
        await super().close()
