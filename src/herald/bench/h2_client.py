"""A small HTTP/2 client connection on asyncio + h2: APNs' transport until CurlSession
(providers/http_session.py) replaced it. No provider uses it: it lives here, with the
benchmark, as the reference `herald bench-clients` measures the other clients against
("herald-h2").

Why not httpx: measured against the fake APNs on this machine, httpx's HTTP/2 path cost
about 4.6 ms of client CPU per push; this connection costs a fraction of that (see apns.py).
It does only what APNs needs: POST requests with small bodies, many concurrent streams on
one TLS connection, the server's SETTINGS_MAX_CONCURRENT_STREAMS honoured, flow control,
GOAWAY (no new streams; streams above last_stream_id fail as retryable) and connection loss.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

# What a request can fail with before an answer: every one of them is worth a retry.
H2_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    ssl.SSLError,
    TimeoutError,
    h2.exceptions.ProtocolError,
)


class StreamFailed(ConnectionError):
    """The stream was reset or the connection went away before the answer."""


@dataclass(frozen=True, slots=True)
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Stream:
    answer: asyncio.Future[H2Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


class _CountedH2Connection(h2.connection.H2Connection):
    """h2 counts open streams by scanning all of them before every new stream: O(n) per
    request, the largest CPU cost with hundreds of streams in flight. We already know an
    upper bound (streams we have not finished with), so use it, and let h2 scan (and purge
    closed streams from its table) only every `_PURGE_EVERY` streams."""

    _PURGE_EVERY = 128

    def __init__(self, config: h2.config.H2Configuration, in_flight: Callable[[], int]) -> None:
        super().__init__(config=config)
        self._in_flight = in_flight
        self._new_streams = 0

    @property
    def open_outbound_streams(self) -> int:
        self._new_streams += 1
        if self._new_streams % self._PURGE_EVERY == 0:
            return int(super().open_outbound_streams)
        return self._in_flight()


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection. Create it with `open`; it is `usable` until GOAWAY or loss."""

    def __init__(self, authority: str) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = _CountedH2Connection(config, lambda: len(self._streams))
        _skip_huffman(self._h2)
        self._authority = authority
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._settings_received = asyncio.Event()
        self._stream_slots = asyncio.Condition()
        self._window_updated = asyncio.Event()
        self._closed = False
        self._going_away = False
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, host: str, port: int, ssl_context: ssl.SSLContext, timeout: float
    ) -> H2ClientConnection:
        ssl_context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        authority = host if port == 443 else f"{host}:{port}"
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                lambda: cls(authority), host, port, ssl=ssl_context, server_hostname=host
            ),
            timeout,
        )
        # Apple (and RFC 9113) start at the server's limits: wait for its SETTINGS.
        await asyncio.wait_for(connection._settings_received.wait(), timeout)
        return connection

    @property
    def usable(self) -> bool:
        return not self._closed and not self._going_away

    @property
    def max_concurrent_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> H2Response:
        async with asyncio.timeout(timeout):
            stream_id = await self._open_stream(method, path, headers, bool(body))
            answer = self._streams[stream_id].answer
            try:
                await self._send_body(stream_id, body)
                return await answer
            except BaseException:
                # The timeout arrives here as a cancellation: tell the server we gave up.
                if not answer.done():
                    self._reset(stream_id)
                raise
            finally:
                await self._close_stream(stream_id)

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._h2.close_connection()
            self._flush()
            self._transport.close()

    # --- streams -----------------------------------------------------------------------

    async def _open_stream(
        self, method: str, path: str, headers: dict[str, str], has_body: bool
    ) -> int:
        async with self._stream_slots:
            await self._stream_slots.wait_for(
                lambda: not self.usable or len(self._streams) < self.max_concurrent_streams
            )
            if not self.usable:
                raise StreamFailed("connection closed or going away")
            stream_id = self._h2.get_next_available_stream_id()
            request_headers = [
                (":method", method),
                (":scheme", "https"),
                (":authority", self._authority),
                (":path", path),
                *headers.items(),
            ]
            self._h2.send_headers(stream_id, request_headers, end_stream=not has_body)
            future = asyncio.get_running_loop().create_future()
            self._streams[stream_id] = _Stream(future)
            self._flush()
            return stream_id

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            window = min(
                self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size
            )
            if window <= 0:
                self._window_updated.clear()
                await self._window_updated.wait()
                self._raise_if_closed(stream_id)
                continue
            chunk, view = view[:window], view[window:]
            self._h2.send_data(stream_id, chunk.tobytes(), end_stream=not view)
            self._flush()

    async def _close_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        async with self._stream_slots:
            self._stream_slots.notify()

    def _reset(self, stream_id: int) -> None:
        try:
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            self._flush()
        except h2.exceptions.ProtocolError:
            pass  # the stream had already ended

    def _raise_if_closed(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if self._closed or stream is None or stream.answer.done():
            raise StreamFailed("stream ended while waiting for flow-control window")

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass (isinstance fails under
        # `herald serve`, which runs on uvloop), though it has the whole Transport interface.
        self._transport = cast(asyncio.Transport, transport)
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self._fail_all(StreamFailed(f"HTTP/2 protocol error: {error}"))
            self.close()
            return
        for event in events:
            self._on_event(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._fail_all(StreamFailed(f"connection lost: {exc or 'closed'}"))
        self._settings_received.set()
        self._window_updated.set()
        self._wake_waiters_soon()

    # --- events ------------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._on_headers(event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._fail(event.stream_id, StreamFailed(f"stream reset: {event.error_code!r}"))
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_updated.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings_received.set()
            self._window_updated.set()
            self._wake_waiters_soon()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_headers(self, stream_id: int, headers: list[Any] | None) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or headers is None:
            return
        for name, value in headers:
            name, value = str(name), str(value)
            if name == ":status":
                stream.status = int(value)
            else:
                stream.headers[name] = value

    def _on_data(self, event: h2.events.DataReceived) -> None:
        if event.flow_controlled_length:
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self._streams.get(event.stream_id)
        if stream is not None and event.data:
            stream.chunks.append(event.data)

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.answer.done():
            body = b"".join(stream.chunks)
            stream.answer.set_result(H2Response(stream.status, stream.headers, body))

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._going_away = True
        last = event.last_stream_id or 0
        for stream_id in list(self._streams):
            if stream_id > last:  # never processed: safe to retry elsewhere
                self._fail(stream_id, StreamFailed(f"GOAWAY {event.error_code!r}"))
        self._wake_waiters_soon()

    def _fail(self, stream_id: int, error: Exception) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.answer.done():
            stream.answer.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        for stream_id in list(self._streams):
            self._fail(stream_id, error)

    def _wake_waiters_soon(self) -> None:
        # Protocol callbacks are synchronous; the Condition needs a task. Keep a reference
        # so the task is not garbage-collected before it runs.
        task = asyncio.get_running_loop().create_task(self._wake_stream_waiters())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_stream_waiters(self) -> None:
        async with self._stream_slots:
            self._stream_slots.notify_all()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _skip_huffman(connection: h2.connection.H2Connection) -> None:
    """Send header values as plain literals: Huffman coding is optional in HPACK, and in
    pure-Python hpack it cost more CPU than everything else per request (unique :path and
    apns-id values are encoded every time), for a few dozen bytes saved on the wire."""
    encode = connection.encoder.encode

    def encode_plain(headers: Any, huffman: bool = True) -> bytes:
        return bytes(encode(headers, huffman=False))

    connection.encoder.encode = encode_plain  # type: ignore[method-assign]
