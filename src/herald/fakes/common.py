"""What every fake provider server shares: an in-process hypercorn server (HTTP/1.1 and
HTTP/2, TLS when given certificates), a tiny request/response model, injected latency and
failures, and per-device scripted faults."""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Self, cast
from urllib.parse import parse_qsl

import orjson
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from herald.clock import SYSTEM_CLOCK, Clock
from herald.fakes.tls import LocalTls

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    query: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, orjson.dumps(payload), (("content-type", "application/json"), *headers))


@dataclass(slots=True)
class Fault:
    """A scripted answer for one device: `kind` names a row of the fake's error table."""

    kind: str
    times: int | None = None  # None: every time
    retry_after: float | None = None


@dataclass(slots=True)
class Faults:
    by_key: dict[str, Fault] = field(default_factory=dict)

    def add(self, key: str, fault: Fault) -> None:
        self.by_key[key] = fault

    def take(self, key: str) -> Fault | None:
        fault = self.by_key.get(key)
        if fault is None:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self.by_key[key]
        return fault


def retry_after_headers(fault: Fault | None) -> tuple[tuple[str, str], ...]:
    if fault is None or fault.retry_after is None:
        return ()
    return (("retry-after", str(int(fault.retry_after))),)


class FakeServer(abc.ABC):
    """Base of the fakes. Subclasses implement `handle`; the base adds latency, random 503s
    (`unavailable`), concurrency accounting and the server lifecycle."""

    def __init__(
        self,
        *,
        tls: LocalTls | None = None,
        clock: Clock = SYSTEM_CLOCK,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        fail_fraction: float = 0.0,
        seed: int | None = None,
        max_concurrent_streams: int = 100,
    ) -> None:
        self.tls = tls
        self.clock = clock
        self.host = host
        self.port = port
        self.latency = latency
        self.fail_fraction = fail_fraction
        self.max_concurrent_streams = max_concurrent_streams
        self.faults = Faults()
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.http_versions: set[str] = set()
        self._random = random.Random(seed)
        self._shutdown: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @abc.abstractmethod
    async def handle(self, request: Request) -> Response: ...

    @abc.abstractmethod
    def unavailable(self) -> Response:
        """The answer to a randomly injected failure (a 503 in the provider's dialect)."""

    async def start(self) -> None:
        config = self._config()
        sockets = config.create_sockets()
        bound = [*sockets.secure_sockets, *sockets.insecure_sockets]
        self.port = bound[0].getsockname()[1]
        for sock in bound:
            # Listening now queues early connections until hypercorn starts accepting.
            sock.listen(config.backlog)
        self._shutdown = asyncio.Event()
        app = wrap_app(cast(Any, self._asgi), config.wsgi_max_body_size, "asgi")
        self._task = asyncio.create_task(
            worker_serve(app, config, sockets=sockets, shutdown_trigger=self._shutdown.wait)
        )
        await asyncio.sleep(0)

    async def stop(self) -> None:
        if self._shutdown is None or self._task is None:
            return
        self._shutdown.set()
        # hypercorn's graceful shutdown can end in CancelledError or InvalidStateError when
        # clients still hold connections; the server is down either way.
        with contextlib.suppress(asyncio.CancelledError, asyncio.InvalidStateError):
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:
                self._task.cancel()
        self._shutdown = None
        self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _config(self) -> Config:
        config = Config()
        config.bind = [f"{self.host}:{self.port}"]
        config.h2_max_concurrent_streams = self.max_concurrent_streams
        config.keep_alive_timeout = 300
        config.keep_alive_max_requests = 1_000_000_000
        config.graceful_timeout = 1
        config.accesslog = None
        if self.tls is not None:
            config.certfile = str(self.tls.cert_file)
            config.keyfile = str(self.tls.key_file)
        return config

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = await _read_request(scope, receive)
        response = await self._dispatch(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _dispatch(self, request: Request) -> Response:
        self.requests += 1
        self.http_versions.add(request.http_version)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.fail_fraction and self._random.random() < self.fail_fraction:
                return self.unavailable()
            return await self.handle(request)
        finally:
            self.in_flight -= 1


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_request(scope: Scope, receive: Receive) -> Request:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        # A repeated header is kept joined so fakes can detect DuplicateHeaders.
        headers[name] = f"{headers[name]}\x00{value}" if name in headers else value
    return Request(
        method=scope["method"],
        path=scope["path"],
        headers=headers,
        body=b"".join(chunks),
        http_version=scope.get("http_version", "1.1"),
        query=scope.get("query_string", b"").decode("latin-1"),
    )
