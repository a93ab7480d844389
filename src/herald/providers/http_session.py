"""The HTTP plumbing every HTTP provider shares, on two clients:

- aiohttp for Web Push, SendGrid and Twilio. Web Push posts to caller-chosen URLs, and only
  aiohttp lets Herald check every address before connect() (targets.py's policy, through
  `guarded_connector`);
- `CurlSession` (libcurl through pycurl's multi interface, on the event loop) for FCM and
  APNs, whose hosts come from the configuration. Measured with `herald bench-clients`
  (docs/benchmarks.md, "Provider HTTP clients"), it was the cheapest client per request
  that installs here, for FCM over HTTP/1.1 and for APNs over HTTP/2.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlencode

import aiohttp
import pycurl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from herald.domain import Outcome, ProviderDown, Retry
from herald.providers.base import OutboundMessage, Provider
from herald.providers.targets import TargetPolicy, TargetRefused

# What a request can fail with before any answer: the provider is unreachable.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    pycurl.error,
    ssl.SSLError,
    OSError,
    TimeoutError,
)


# aiohttp adds these to every request unless told not to; no provider API needs them, and
# building them is a measurable share of the client CPU per request (docs/benchmarks.md,
# "Figures behind code choices").
SKIPPED_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")


def unreachable(provider: str, error: BaseException) -> ProviderDown:
    """No answer at all (refused, reset, DNS, TLS, timeout): the provider is down for now,
    so the worker opens its circuit and fails over to the next provider at once."""
    return ProviderDown(f"{provider} unreachable: {type(error).__name__}: {error}")


def refused_target(error: BaseException) -> TargetRefused | None:
    """The TargetRefused behind an aiohttp connection error, if that is what it was."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TargetRefused):
            return seen
        inner = getattr(seen, "os_error", None)
        seen = inner if isinstance(inner, BaseException) else seen.__cause__
    return None


class GuardedResolver(AbstractResolver):
    """Resolves as aiohttp does, then refuses the host when ANY of its addresses is not
    allowed (a name with one public and one private record is refused)."""

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._policy.check_address(result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


def _guarded_socket_factory(
    policy: TargetPolicy,
) -> Callable[[tuple[int, int, int, str, tuple[object, ...]]], socket.socket]:
    """The last word before connect(): aiohttp skips the resolver for an IP literal, so the
    address each socket is about to connect to is checked here too."""

    def factory(addr_info: tuple[int, int, int, str, tuple[object, ...]]) -> socket.socket:
        family, type_, proto, _, address = addr_info
        policy.check_address(str(address[0]))
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def guarded_connector(
    policy: TargetPolicy, resolver: AbstractResolver | None = None, **kwargs: object
) -> aiohttp.TCPConnector:
    """A TCPConnector that connects only to addresses `policy` allows, checked on every
    resolved address and again on the socket's address (DNS rebinding, IP literals).
    `resolver` replaces aiohttp's own name lookup (tests script DNS answers with it)."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, resolver),
        socket_factory=_guarded_socket_factory(policy),
        **kwargs,  # type: ignore[arg-type]
    )


def new_session(
    *,
    connections: int,
    timeout_s: float,
    ca_file: str | None = None,
    tls: ssl.SSLContext | None = None,
    connections_per_host: int = 0,
    keepalive_s: float = 15.0,
    targets: TargetPolicy | None = None,
    resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """A kept-alive connection pool; `ca_file` adds trusted CAs (HERALD_CA_FILE). With
    `targets`, the pool connects only where that policy allows (caller-chosen URLs)."""
    context: ssl.SSLContext | bool = tls or True
    if ca_file and tls is None:
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=ca_file)
    options: dict[str, object] = {
        "limit": connections,
        "limit_per_host": connections_per_host,
        "ssl": context,
        "keepalive_timeout": keepalive_s,
    }
    connector = (
        guarded_connector(targets, resolver, **options)
        if targets is not None
        else aiohttp.TCPConnector(**options)  # type: ignore[arg-type]
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        skip_auto_headers=SKIPPED_AUTO_HEADERS,
    )


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date is ignored)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # lower-case names: only those the caller asked for
    body: bytes


class CurlSession:
    """A kept-alive libcurl pool (pycurl's multi interface, driven by this event loop) for a
    configured provider host, never a caller-chosen one: it has no hook for targets.py's
    connect-time checks. It trusts the system roots plus `ca_file` (HERALD_CA_FILE), speaks
    only HTTP(S), follows no redirect, asks for no compression and keeps no cookies.
    `http2_only`: HTTP/2 over TLS (ALPN), every request a stream on one connection, as many
    at once as the server's SETTINGS_MAX_CONCURRENT_STREAMS allows (libcurl queues the rest;
    after GOAWAY it opens a new connection)."""

    def __init__(
        self,
        *,
        connections: int | None,
        timeout_s: float,
        ca_file: Path | None = None,
        http2_only: bool = False,
        keepalive_s: float = 60.0,
    ) -> None:
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._keepalive_s = max(1, int(keepalive_s))
        self._http2 = http2_only
        self._trust = _trust_bundle(ca_file)
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        if http2_only:
            self._multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
            self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, 1)
            # libcurl's own cap (default 100); the server's SETTINGS_MAX_CONCURRENT_STREAMS
            # still applies when lower (Apple: 1000 once a request authenticated).
            self._multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, 1000)
        elif connections:
            self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, connections)
            self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, connections)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watched: set[int] = set()
        self._idle: list[Any] = []
        self._pending: dict[Any, asyncio.Future[None]] = {}
        self.closed = False

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout_s: float | None = None,
        read_headers: Sequence[str] = (),
    ) -> HttpAnswer:
        """One POST (all any of its providers sends); raises one of NETWORK_ERRORS when no
        answer came. `read_headers`: the response headers to keep (lower-case names)."""
        if self.closed:
            raise ConnectionError("the HTTP session is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        handle = self._idle.pop() if self._idle else self._new_handle()
        chunks: list[bytes] = []
        lines: list[bytes] = []
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.HTTPHEADER, [*_NO_DEFAULT_HEADERS, *_header_lines(headers)])
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.WRITEFUNCTION, chunks.append)
        handle.setopt(pycurl.HEADERFUNCTION, lines.append)
        timeout_ms = self._timeout_ms if timeout_s is None else max(1, int(timeout_s * 1000))
        handle.setopt(pycurl.TIMEOUT_MS, timeout_ms)
        done = self._loop.create_future()
        self._pending[handle] = done
        reusable = True
        try:
            self._multi.add_handle(handle)
            await done
            status = int(handle.getinfo(pycurl.RESPONSE_CODE))
            if self._http2 and handle.getinfo(pycurl.INFO_HTTP_VERSION) != _HTTP_2:
                raise ConnectionError(f"{url} did not answer over HTTP/2")
        except BaseException:
            if self._pending.pop(handle, None) is not None:  # cancelled while in flight
                self._multi.remove_handle(handle)
                reusable = False
            raise
        finally:
            if reusable and not self.closed:
                self._idle.append(handle)
            else:
                handle.close()
        return HttpAnswer(status, _kept_headers(lines, read_headers), b"".join(chunks))

    async def post_form(
        self, url: str, form: Mapping[str, str], *, read_headers: Sequence[str] = ()
    ) -> HttpAnswer:
        headers = {"content-type": "application/x-www-form-urlencoded"}
        body = urlencode(form).encode()
        return await self.post(url, headers, body, read_headers=read_headers)

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Close now: requests still in flight fail with ConnectionError."""
        if self.closed:
            return
        self.closed = True
        for handle, done in list(self._pending.items()):
            self._multi.remove_handle(handle)
            if not done.done():
                done.set_exception(ConnectionError("the HTTP session was closed"))
        self._pending.clear()
        for handle in self._idle:
            handle.close()
        self._idle.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._multi.close()  # may report sockets as removed
        for fd in list(self._watched):
            self._unwatch(fd)

    # --- libcurl's callbacks and the loop ----------------------------------------------------

    def _new_handle(self) -> Any:
        handle = pycurl.Curl()
        if self._trust is not None:
            handle.setopt(pycurl.CAINFO, self._trust)
        if _SYSTEM_CA_DIR is not None:
            handle.setopt(pycurl.CAPATH, _SYSTEM_CA_DIR)
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTPS | pycurl.PROTO_HTTP)
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.MAXAGE_CONN, self._keepalive_s)
        if self._http2:
            handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
            handle.setopt(pycurl.PIPEWAIT, 1)  # wait for the one connection, do not open more
        else:
            handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        return handle

    def _on_socket(self, event: int, fd: int, multi: object, data: object) -> None:
        assert self._loop is not None
        self._unwatch(fd)
        if event == pycurl.POLL_REMOVE:
            return
        if event in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self._loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if event in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self._loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        self._watched.add(fd)

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched and self._loop is not None:
            self._watched.discard(fd)
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)

    def _on_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0 and self._loop is not None and not self.closed:
            self._timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, event: int) -> None:
        if self.closed:
            return
        self._multi.socket_action(fd, event)
        while True:
            queued, finished, failed = self._multi.info_read()
            for handle in finished:
                self._finish(handle, None)
            for handle, code, message in failed:
                self._finish(handle, _curl_error(code, message))
            if not queued:
                return

    def _finish(self, handle: Any, error: BaseException | None) -> None:
        self._multi.remove_handle(handle)
        done = self._pending.pop(handle, None)
        if done is None or done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


# libcurl adds `Accept: */*` and, for larger bodies, `Expect: 100-continue` (a round trip).
_NO_DEFAULT_HEADERS = ("Accept:", "Expect:")
_HTTP_2 = pycurl.CURL_HTTP_VERSION_2_0
_SYSTEM_CA = ssl.get_default_verify_paths()
_SYSTEM_CA_DIR = (
    _SYSTEM_CA.capath if _SYSTEM_CA.capath and Path(_SYSTEM_CA.capath).is_dir() else None
)


def _trust_bundle(ca_file: Path | None) -> str | None:
    """A CA bundle file with the system's roots (as Python's ssl finds them) plus `ca_file`:
    trusted in addition to the public roots, never instead of them (as
    push_http.client_ssl_context does). Written once per process and `ca_file`; a path, not
    the PEM itself (CAINFO_BLOB): libcurl compares a transfer's CA setting with each pooled
    connection's before reusing it, which for a 200 kB blob doubled the client CPU per
    request (measured with `herald bench-clients`)."""
    system = _SYSTEM_CA.cafile if _SYSTEM_CA.cafile and Path(_SYSTEM_CA.cafile).is_file() else None
    if ca_file is None:
        return system
    extra = ca_file.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise ValueError(f"{ca_file} holds no PEM certificate")
    key = (str(ca_file.resolve()), extra)
    bundle = _BUNDLES.get(key)
    if bundle is None:
        parts = [Path(system).read_bytes()] if system else []
        descriptor, bundle = tempfile.mkstemp(prefix="herald-ca-", suffix=".pem")
        with os.fdopen(descriptor, "wb") as out:
            out.write(b"\n".join([*parts, extra]))
        atexit.register(_remove_quietly, bundle)
        _BUNDLES[key] = bundle
    return bundle


_BUNDLES: dict[tuple[str, bytes], str] = {}


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _kept_headers(lines: list[bytes], names: Sequence[str]) -> dict[str, str]:
    """The headers called `names` (lower-case) among the response's header lines."""
    kept: dict[str, str] = {}
    if names:
        for line in lines:
            name, colon, value = line.partition(b":")
            if colon:
                key = name.decode("latin-1").lower()
                if key in names:
                    kept[key] = value.strip().decode("latin-1")
    return kept


def _header_lines(headers: Mapping[str, str]) -> list[str]:
    return [f"{name}: {value}" for name, value in headers.items()]


def _curl_error(code: int, message: str) -> BaseException:
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return TimeoutError(f"curl: {message}")
    return ConnectionError(f"curl error {code}: {message}")


class Session(Protocol):
    @property
    def closed(self) -> bool: ...

    async def close(self) -> None: ...


SessionT = TypeVar("SessionT", bound=Session)


class PooledProvider(Provider, Generic[SessionT]):
    """A provider over one kept-alive connection pool: every message of a batch is sent
    concurrently (the pool bounds the connections) and answers one outcome."""

    _session: SessionT | None = None

    @abc.abstractmethod
    def _new_session(self) -> SessionT:
        """The connection pool, with this provider's limits, timeouts and trusted CAs."""

    @abc.abstractmethod
    async def _send_one(self, session: SessionT, message: OutboundMessage) -> Outcome:
        """One message; never raises for a network error or an answer."""

    def _ensure_session(self) -> SessionT:
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self._session

    async def start(self) -> None:
        self._ensure_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)

        def keep(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome

        await self.send_each(messages, keep)
        return [o if o is not None else Retry("no outcome") for o in outcomes]

    async def send_each(
        self, messages: Sequence[OutboundMessage], report: Callable[[int, Outcome], None]
    ) -> None:
        try:
            session = self._ensure_session()
        except (OSError, ValueError) as exc:  # e.g. an unreadable HERALD_CA_FILE
            for index in range(len(messages)):
                report(index, ProviderDown(f"{self.name} client cannot start: {exc}"))
            return

        async def one(index: int, message: OutboundMessage) -> None:
            report(index, await self._send_one(session, message))

        await asyncio.gather(*(one(i, m) for i, m in enumerate(messages)))


class HttpProvider(PooledProvider[aiohttp.ClientSession]):
    """A provider over one kept-alive aiohttp pool (the ones that need targets.py's checks,
    or whose traffic is too small for the client's cost to matter)."""
