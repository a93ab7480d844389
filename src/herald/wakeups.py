"""Wake-ups instead of polls: what lets an idle role sleep.

The relay publishes what others write (new notification rows, and outbox rows for the rest;
herald.storage.outbox): the API (notifications, broadcasts), the router's broadcast fan-out
and the scheduler's digests. Each writer wakes it once its
transaction has committed: in one process by setting the relay's event, across processes
on PostgreSQL with `NOTIFY herald_outbox` on a connection of the writer's own
(`PgDoorbell`), which the relay LISTENs to (`PgListener`). The relay keeps a slow fallback
pass for a wake-up that was lost (a listener reconnecting, a writer's NOTIFY failing).

Rings are coalesced: while one NOTIFY is in flight, any number of rings send one more after
it. Every ring is therefore followed by a NOTIFY sent after it, i.e. after the ringer's
commit, so the relay's next pass sees the row: one statement per round trip at most, not
one per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from herald.outages import is_outage

log = structlog.get_logger()

Wake = Callable[[], None]
OUTBOX_CHANNEL = "herald_outbox"


class WakeSource(Protocol):
    """Calls `wake` when there may be work (and once when it (re)connects)."""

    async def start(self, wake: Wake) -> None: ...

    async def close(self) -> None: ...


async def _connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn, timeout=5)


class PgDoorbell:
    """NOTIFY `channel` after a commit, coalesced; connects on the first ring."""

    def __init__(self, dsn: str, channel: str = OUTBOX_CHANNEL) -> None:
        self.dsn = dsn
        self.channel = channel
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False
        self.sent = 0  # NOTIFYs sent (for tests and diagnostics)

    def ring(self) -> None:
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self._again = True  # the running sender sends once more after its NOTIFY
            return
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while True:
            self._again = False
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await _connect(self.dsn)
                await self._connection.execute(f"NOTIFY {self.channel}")
                self.sent += 1
            except Exception as error:  # the relay's fallback pass finds the rows
                log.warning("wake-up NOTIFY failed", channel=self.channel, error=str(error))
                connection, self._connection = self._connection, None
                if connection is not None:
                    connection.terminate()
                return
            if not self._again:
                return

    async def drain(self) -> None:
        """Wait for the NOTIFY in flight (tests, close)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        await self.drain()
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close()
        self._connection = None


class PgListener:
    """LISTEN `channel` on a connection of its own; `wake` on every notification and after
    every (re)connect, since what was written while it was away sent no wake-up it heard.
    A database that is down is waited out with backoff, in the background."""

    RECONNECT_MAX_SECONDS = 5.0

    def __init__(self, dsn: str, channel: str = OUTBOX_CHANNEL) -> None:
        self.dsn = dsn
        self.channel = channel
        self._wake: Wake = lambda: None
        self._connection: Any = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, wake: Wake) -> None:
        self._wake = wake
        try:
            await self._listen()
        except Exception as error:
            if not is_outage(error):
                raise
            self._reconnect_later()

    async def _listen(self) -> None:
        connection = await _connect(self.dsn)
        await connection.add_listener(self.channel, self._on_notify)
        connection.add_termination_listener(self._on_lost)
        self._connection = connection
        self._wake()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._wake()

    def _on_lost(self, _conn: Any) -> None:
        if not self._closed:
            log.warning("wake-ups: LISTEN connection lost, reconnecting", channel=self.channel)
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        delay = 0.1
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._listen()
            except Exception as error:
                if not is_outage(error):
                    raise
                delay = min(delay * 2, self.RECONNECT_MAX_SECONDS)
            else:
                log.info("wake-ups: LISTEN connection back", channel=self.channel)
                return

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close()
        self._connection = None
