"""APNs with token-based auth: HTTP/2 over TLS, one stream per notification.

Transport: libcurl over HTTP/2 (http_session.CurlSession), one long-lived connection that
follows the server's SETTINGS_MAX_CONCURRENT_STREAMS (libcurl queues the streams beyond it)
and is replaced after a network error, IdleTimeout or a 5xx; after GOAWAY libcurl itself
moves new streams to a new connection. `herald bench-clients` (docs/benchmarks.md,
"Provider HTTP clients") measured it as the cheapest client per push, against our
pure-Python h2 connection (bench/h2_client.py, which it replaced) and every other
candidate that installs here. aioapns (h2-based) was not taken: a new dependency with its
own token clock, retry policy and outcome mapping, all of which Herald keeps elsewhere.

The provider JWT (ES256) is reused and rotated after 50 minutes: Apple refuses tokens older
than an hour and throttles tokens changed more often than every 20 minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel, Priority
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.providers.apns.payload import (
    APNS_MAX_COLLAPSE_ID_BYTES,
    APNS_MAX_PAYLOAD_BYTES,
    apns_is_alert,
    apns_payload,
)
from herald.providers.base import OutboundMessage, Provider
from herald.providers.http_session import NETWORK_ERRORS, CurlSession
from herald.providers.push_http import json_bytes, parse_retry_after

TOKEN_ROTATE_AFTER = 50 * 60  # within Apple's window of 20 to 60 minutes
TOO_MANY_TOKEN_UPDATES_BACKOFF = 60.0  # Apple gives no figure (unconfirmed)

INVALID_TARGET_REASONS = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
PROVIDER_DOWN_REASONS = frozenset(
    {
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
    }
)
_READ_HEADERS = ("apns-id", "retry-after")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


@dataclass(frozen=True, slots=True)
class ApnsAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def reason(self) -> str:
        try:
            document = orjson.loads(self.body) if self.body else {}
        except orjson.JSONDecodeError:
            return ""
        return str(document.get("reason", "")) if isinstance(document, dict) else ""


class ProviderTokens:
    """The ES256 provider token: one at a time, reused until it is 50 minutes old."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, clock: Clock
    ) -> None:
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._clock = clock
        self._token: str | None = None
        self._issued_at = 0.0
        self.issued = 0

    def current(self) -> str:
        if self._token is None or self._clock.time() - self._issued_at >= TOKEN_ROTATE_AFTER:
            self._issue()
        assert self._token is not None
        return self._token

    def renew(self, stale: str) -> str:
        """A new token unless another request already replaced `stale`."""
        if self._token == stale:
            self._issue()
        return self.current()

    def _issue(self) -> None:
        self._issued_at = self._clock.time()
        self._token = jwt.encode(
            {"iss": self._team_id, "iat": int(self._issued_at)},
            self._key,
            algorithm="ES256",
            headers={"kid": self._key_id},
        )
        self.issued += 1


class _Connection:
    """One HTTP/2 connection (a libcurl pool of one) and how many requests are using it."""

    def __init__(self, session: CurlSession) -> None:
        self.session = session
        self.users = 0
        self.retired = False


class Http2Connections:
    """The current HTTP/2 connection to APNs, opened on first use and kept open (Apple
    treats rapid reconnects as an attack). `replace` retires it once its in-flight streams
    end, so one bad answer does not cut the other streams off."""

    def __init__(self, base_url: str, ca_file: Path | None, timeout: float) -> None:
        parts = urlsplit(base_url)
        # Apple's hosts, or a fake's `host:port` ([v6]:port included); TLS either way.
        self.origin = f"https://{parts.netloc or 'api.push.apple.com'}"
        self._ca_file = ca_file
        self._timeout = timeout
        self._current: _Connection | None = None
        self.opened = 0

    def acquire(self) -> _Connection:
        current = self._current
        if current is None or current.session.closed:
            current = self._current = _Connection(
                CurlSession(
                    connections=1,
                    timeout_s=self._timeout,
                    ca_file=self._ca_file,
                    http2_only=True,
                    keepalive_s=3600,  # Apple: keep the connection open
                )
            )
            self.opened += 1
        current.users += 1
        return current

    def release(self, connection: _Connection) -> None:
        connection.users -= 1
        if connection.retired and connection.users == 0:
            connection.session.shutdown()

    def replace(self, connection: _Connection) -> None:
        if connection is self._current:
            self._current = None
        if not connection.retired:
            connection.retired = True
            if connection.users == 0:
                connection.session.shutdown()

    def close(self) -> None:
        if self._current is not None:
            self._current.session.shutdown()
            self._current = None


class ApnsProvider(Provider):
    name = "apns"
    channel = Channel.PUSH
    batch_size = 500

    def __init__(
        self,
        *,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        topic: str,
        base_url: str = "https://api.push.apple.com",
        clock: Clock = SYSTEM_CLOCK,
        ca_file: Path | None = None,
        max_in_flight: int = 1000,
        timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.tokens = ProviderTokens(key, key_id, team_id, clock)
        self.timeout = timeout
        self.connections = Http2Connections(self.base_url, ca_file, timeout)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._first_stream = asyncio.Lock()
        self._authenticated = False

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        key_file, key_id = settings.apns_key_file, settings.apns_key_id
        team_id, topic = settings.apns_team_id, settings.apns_topic
        if key_file is None or not key_id or not team_id or not topic:
            return None
        return cls(
            key=load_signing_key(key_file),
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            base_url=settings.apns_base_url,
            clock=clock,
            ca_file=settings.ca_file,
        )

    def describe(self) -> str:
        return f"apns topic={self.topic} base={self.base_url}"

    async def close(self) -> None:
        self.connections.close()

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def send_each(
        self, messages: Sequence[OutboundMessage], report: Callable[[int, Outcome], None]
    ) -> None:
        async def one(index: int, message: OutboundMessage) -> None:
            report(index, await self._send_one(message))

        await asyncio.gather(*(one(i, m) for i, m in enumerate(messages)))

    async def _send_one(self, message: OutboundMessage) -> Outcome:
        body = json_bytes(self._payload(message))
        if len(body) > APNS_MAX_PAYLOAD_BYTES:
            return Rejected(f"apns payload is {len(body) - APNS_MAX_PAYLOAD_BYTES} bytes over 4096")
        path, headers = f"/3/device/{message.target}", self._headers(message)
        if not self._authenticated:
            # Apple: one stream until the first authenticated request has succeeded.
            async with self._first_stream:
                if not self._authenticated:
                    return await self._deliver(path, headers, body)
        async with self._in_flight:
            return await self._deliver(path, headers, body)

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        payload = message.payload
        return apns_payload(
            payload.get("title"),
            payload.get("body"),
            payload.get("data"),
            delivery_id=message.delivery_id,
            rich=payload.get("push"),
        )

    def _headers(self, message: OutboundMessage) -> dict[str, str]:
        alert = apns_is_alert(message.payload.get("title"), message.payload.get("body"))
        urgent = alert and message.priority != Priority.LOW
        expiration = int(self.clock.time()) + message.ttl_seconds(self.clock.now())
        headers = {
            "apns-push-type": "alert" if alert else "background",
            "apns-topic": self.topic,
            "apns-priority": "10" if urgent else "5",
            "apns-expiration": str(expiration),
        }
        if message.collapse_key:
            headers["apns-collapse-id"] = collapse_id(message.collapse_key)
        if _UUID_RE.match(message.delivery_id):
            headers["apns-id"] = message.delivery_id
        return headers

    async def _deliver(self, path: str, headers: dict[str, str], body: bytes) -> Outcome:
        token = self.tokens.current()
        answer = await self._post(path, headers, body, token)
        if isinstance(answer, ApnsAnswer) and answer.reason == "ExpiredProviderToken":
            answer = await self._post(path, headers, body, self.tokens.renew(token))
        elif isinstance(answer, ApnsAnswer) and answer.reason == "IdleTimeout":
            answer = await self._post(path, headers, body, token)  # on the new connection
        if isinstance(answer, ApnsAnswer):
            if answer.status != 403:
                self._authenticated = True
            return classify_apns_response(answer, self.clock.time())
        return answer

    async def _post(
        self, path: str, headers: dict[str, str], body: bytes, token: str
    ) -> ApnsAnswer | ProviderDown:
        # No answer (refused, reset, DNS, TLS, GOAWAY, timeout): APNs is down for now.
        try:
            connection = self.connections.acquire()
        except (OSError, ValueError) as error:  # e.g. an unreadable HERALD_CA_FILE
            return ProviderDown(f"apns client cannot start: {error}")
        request_headers = {**headers, "authorization": f"bearer {token}"}
        try:
            response = await connection.session.post(
                self.connections.origin + path,
                request_headers,
                body,
                timeout_s=self.timeout,
                read_headers=_READ_HEADERS,
            )
        except NETWORK_ERRORS as error:
            self.connections.replace(connection)
            return ProviderDown(f"apns unreachable: {type(error).__name__}: {error}")
        finally:
            self.connections.release(connection)
        answer = ApnsAnswer(response.status, response.headers, response.body)
        if answer.status >= 500 or answer.reason == "IdleTimeout":
            self.connections.replace(connection)  # Apple: retry these on a new connection
        return answer


def classify_apns_response(answer: ApnsAnswer, now: float) -> Outcome:
    """Map one APNs answer onto an outcome (docs/providers.md, APNs table)."""
    if answer.status == 200:
        return Accepted(provider_message_id=answer.headers.get("apns-id"))
    reason = answer.reason
    text = f"apns {answer.status} {reason}".strip()
    after = parse_retry_after(answer.headers.get("retry-after"), now)
    if reason in INVALID_TARGET_REASONS or answer.status == 410:
        return InvalidTarget(text)
    if reason == "TooManyProviderTokenUpdates":
        return Retry(text, after if after is not None else TOO_MANY_TOKEN_UPDATES_BACKOFF)
    if answer.status == 429 or answer.status >= 500 or reason == "IdleTimeout":
        return Retry(text, after)
    # ExpiredProviderToken here means it was refused again with a brand-new token: the
    # clock or the key is wrong, which no retry of ours will fix.
    if (
        answer.status in (403, 404, 405)
        or reason in PROVIDER_DOWN_REASONS
        or reason == "ExpiredProviderToken"
    ):
        return ProviderDown(text)
    return Rejected(text)


def collapse_id(collapse_key: str) -> str:
    """The collapse key when it fits Apple's 64 bytes, else its SHA-256 (64 hex characters),
    which still folds repeats of the same key together."""
    if len(collapse_key.encode()) <= APNS_MAX_COLLAPSE_ID_BYTES:
        return collapse_key
    return hashlib.sha256(collapse_key.encode()).hexdigest()


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC (P-256) private key")
    return key
