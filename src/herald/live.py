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

from herald.outages import is_outage

log = structlog.get_logger()
CHANNEL = "herald_inbox"
QUEUE_LIMIT = 100
# Put in every subscriber's queue when the server stops: the stream ends (its client
# reconnects, to this process restarted or another one, with Last-Event-ID).
STREAM_END: dict[str, Any] = {"event": "stream-end"}


class LiveHub(Protocol):
    async def publish(self, user_id: str, event: dict[str, Any]) -> None: ...

    def subscribe(
        self, user_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...

    def end_streams(self) -> None: ...

    async def close(self) -> None: ...


class LocalHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._ending = False

    def deliver(self, user_id: str, event: dict[str, Any]) -> None:
        for queue in self._subscribers.get(user_id, ()):
            if queue.full():  # a stalled reader loses the oldest, never blocks workers
                queue.get_nowait()
            queue.put_nowait(event)

    async def publish(self, user_id: str, event: dict[str, Any]) -> None:
        self.deliver(user_id, event)

    def end_streams(self) -> None:
        """Every open stream ends, and one opened from now on ends at once."""
        self._ending = True
        for queues in self._subscribers.values():
            for queue in queues:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(STREAM_END)

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        if self._ending:
            queue.put_nowait(STREAM_END)
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


class LiveUnavailable(Exception):
    """A live update could not be sent (the item itself is stored: readers catch up from
    the inbox)."""


class PostgresHub(LocalHub):
    """NOTIFY on publish; one LISTEN connection per process feeds the local subscribers.
    Payloads over PostgreSQL's 8000-byte NOTIFY limit carry only the item id.

    Both connections outlive a database restart: the publisher reconnects on the publish
    that finds it closed, the listener as soon as its connection ends (with backoff)."""

    RECONNECT_MAX_SECONDS = 5.0

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self._listener: Any = None
        self._publisher: Any = None
        self._lock = asyncio.Lock()
        self._relisten: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._listener = await self._listen()
        self._publisher = await self._connect()

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.dsn, timeout=5)

    async def _listen(self) -> Any:
        connection = await self._connect()
        await connection.add_listener(CHANNEL, self._on_notify)
        connection.add_termination_listener(self._on_listener_lost)
        return connection

    def _on_listener_lost(self, _conn: Any) -> None:
        if self._closed or (self._relisten is not None and not self._relisten.done()):
            return
        log.warning("inbox live updates: LISTEN connection lost, reconnecting")
        self._relisten = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                self._listener = await self._listen()
            except Exception as error:
                if not is_outage(error):
                    raise
                log.warning("inbox live updates: LISTEN not back yet", error=str(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RECONNECT_MAX_SECONDS)
            else:
                log.info("inbox live updates: LISTEN connection back")
                return

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
            for attempt in (1, 2):  # the second on a fresh connection
                try:
                    if self._publisher is None or self._publisher.is_closed():
                        self._publisher = await self._connect()
                    await self._publisher.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                    return
                except Exception as error:
                    if not is_outage(error):
                        raise
                    await self._discard_publisher()
                    if attempt == 2:
                        raise LiveUnavailable(f"NOTIFY failed: {error}") from error

    async def _discard_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.terminate()  # no goodbye on a connection that is already gone

    async def close(self) -> None:
        self._closed = True
        if self._relisten is not None:
            self._relisten.cancel()
            await asyncio.gather(self._relisten, return_exceptions=True)
        for connection in (self._listener, self._publisher):
            if connection is not None and not connection.is_closed():
                await connection.close()
        await super().close()
