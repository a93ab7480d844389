"""aiohttp plumbing shared by the HTTP/1.1 providers (FCM, Web Push, SendGrid, Twilio)."""

from __future__ import annotations

import abc
import asyncio
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from herald.domain import Outcome, ProviderDown, Retry
from herald.providers.base import OutboundMessage, Provider
from herald.providers.targets import TargetPolicy, TargetRefused

# What a request can fail with before any answer: the provider is unreachable.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    ssl.SSLError,
    OSError,
    TimeoutError,
)


# aiohttp adds these to every request unless told not to; no provider API needs them, and
# building them cost ~18 µs of the ~160 µs of client CPU per FCM request (measured).
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


class HttpProvider(Provider):
    """A provider over one kept-alive aiohttp pool: every message of a batch is sent
    concurrently (the pool bounds the connections) and answers one outcome."""

    _session: aiohttp.ClientSession | None = None

    @abc.abstractmethod
    def _new_session(self) -> aiohttp.ClientSession:
        """The connection pool, with this provider's limits, timeouts and trusted CAs."""

    @abc.abstractmethod
    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        """One message; never raises for a network error or an answer."""

    def _ensure_session(self) -> aiohttp.ClientSession:
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
