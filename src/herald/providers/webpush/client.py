"""Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291).

Transport: aiohttp (HTTP/1.1, kept-alive connections per push service), chosen by the same
CPU-per-request measurement as FCM. Encryption is http_ece's, never our own crypto.

The endpoint is chosen by whoever registered the device, so it is a target, not the
provider: every answer or failure of one endpoint (401/403/404/410, a refused connection)
is that delivery's outcome and never opens the `webpush` circuit, which a single hostile
endpoint could otherwise hold open for everyone. Connections go only to public addresses
(providers/targets.py, checked again at connect time), redirects are not followed, and the
reason stored for a refused or unreachable endpoint is fixed text, so `last_error` cannot be
used to probe which ports of a host are open.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import http_ece
import jwt
import structlog
from aiohttp.abc import AbstractResolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel, Priority
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, Rejected, Retry
from herald.providers.base import OutboundMessage
from herald.providers.http_session import (
    NETWORK_ERRORS,
    HttpProvider,
    new_session,
    refused_target,
)
from herald.providers.push_http import (
    b64url_encode,
    client_ssl_context,
    decode_b64url,
    parse_retry_after,
)
from herald.providers.targets import REFUSED, TargetPolicy
from herald.providers.webpush.payload import (
    WEBPUSH_MAX_PLAINTEXT_BYTES,
    WEBPUSH_MAX_TOPIC_CHARS,
    validate_web_subscription,
    webpush_plaintext,
)

log = structlog.get_logger()
UNREACHABLE = "web push endpoint unreachable"

VAPID_LIFETIME = 12 * 3600  # RFC 8292 allows at most 24 h
VAPID_RENEW_BEFORE = 3600
URGENCY_BY_PRIORITY = {
    Priority.CRITICAL: "high",
    Priority.HIGH: "high",
    Priority.NORMAL: "normal",
    Priority.LOW: "low",
}
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class VapidKey:
    """The application server's P-256 key pair."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.private_key = private_key
        self.public_key_b64 = b64url_encode(
            private_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )

    @classmethod
    def load(cls, value: str) -> Self:
        """HERALD_VAPID_PRIVATE_KEY: a PEM file path, or base64url of the raw 32-byte private
        scalar (what py_vapid and most VAPID generators print) or of a DER key."""
        path = Path(value)
        if value.startswith("-----BEGIN"):
            return cls.from_private_key(serialization.load_pem_private_key(value.encode(), None))
        if len(value) < 1024 and path.is_file():
            return cls.from_private_key(serialization.load_pem_private_key(path.read_bytes(), None))
        raw = decode_b64url(value.strip())
        if raw is None:
            raise ValueError("VAPID private key is neither a PEM file nor base64url")
        if len(raw) == 32:
            return cls(ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()))
        return cls.from_private_key(serialization.load_der_private_key(raw, None))

    @classmethod
    def from_private_key(cls, key: Any) -> Self:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("VAPID key must be a P-256 EC private key")
        return cls(key)


@dataclass(slots=True)
class _Signed:
    token: str
    expires_at: float


class VapidTokens:
    """One VAPID JWT per push-service origin, reused until an hour before it expires."""

    def __init__(self, key: VapidKey, subject: str, clock: Clock) -> None:
        self._key = key
        self._subject = subject
        self._clock = clock
        self._by_audience: dict[str, _Signed] = {}
        self.issued = 0

    def authorization(self, endpoint: str) -> str:
        return f"vapid t={self._token(endpoint_origin(endpoint))}, k={self._key.public_key_b64}"

    def _token(self, audience: str) -> str:
        now = self._clock.time()
        signed = self._by_audience.get(audience)
        if signed is None or signed.expires_at - now < VAPID_RENEW_BEFORE:
            expires_at = int(now) + VAPID_LIFETIME
            claims = {"aud": audience, "exp": expires_at, "sub": self._subject}
            token = jwt.encode(claims, self._key.private_key, algorithm="ES256")
            signed = self._by_audience[audience] = _Signed(token, expires_at)
            self.issued += 1
        return signed.token


def endpoint_origin(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def webpush_topic(collapse_key: str) -> str:
    """The collapse key when it is a valid Topic (≤ 32 base64url characters), else a
    32-character digest of it, so repeats of one key still replace each other."""
    if _TOPIC_RE.match(collapse_key):
        return collapse_key
    digest = base64.urlsafe_b64encode(hashlib.sha256(collapse_key.encode()).digest())
    return digest.decode()[:WEBPUSH_MAX_TOPIC_CHARS]


def encrypt_payload(plaintext: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """aes128gcm with a fresh sender key per message (RFC 8291), one 4096-byte record."""
    sender_key = ec.generate_private_key(ec.SECP256R1())
    encrypted: bytes = http_ece.encrypt(
        plaintext,
        private_key=sender_key,
        dh=p256dh,
        auth_secret=auth,
        version="aes128gcm",
        rs=4096,
    )
    return encrypted


class WebPushProvider(HttpProvider):
    name = "webpush"
    channel = Channel.PUSH
    batch_size = 500

    def __init__(
        self,
        key: VapidKey,
        subject: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        ca_file: Path | None = None,
        max_in_flight: int = 200,
        connections_per_host: int = 50,
        timeout: float = 10.0,
        targets: TargetPolicy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.key = key
        self.clock = clock
        self.vapid = VapidTokens(key, subject, clock)
        self._ca_file = ca_file
        self._connections_per_host = connections_per_host
        self._timeout = timeout
        self.targets = targets or TargetPolicy()
        self._resolver = resolver
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        if not settings.vapid_private_key or not settings.vapid_subject:
            return None
        return cls(
            VapidKey.load(settings.vapid_private_key),
            settings.vapid_subject,
            clock=clock,
            ca_file=settings.ca_file,
            targets=TargetPolicy.from_settings(settings),
        )

    def describe(self) -> str:
        return f"webpush vapid_key={self.key.public_key_b64[:12]}…"

    def _new_session(self) -> aiohttp.ClientSession:
        return new_session(
            connections=0,
            connections_per_host=self._connections_per_host,
            timeout_s=self._timeout,
            tls=client_ssl_context(self._ca_file),
            keepalive_s=60,
            targets=self.targets,
            resolver=self._resolver,
        )

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        subscription = message.subscription
        problem = validate_web_subscription(subscription)
        if problem or subscription is None:
            return InvalidTarget(problem or "no subscription")
        if self.targets.url_problem(subscription["endpoint"]):
            return InvalidTarget(f"web push {REFUSED}")
        payload = message.payload
        plaintext = webpush_plaintext(
            payload.get("title"),
            payload.get("body"),
            payload.get("data"),
            delivery_id=message.delivery_id,
            rich=payload.get("push"),
        )
        if len(plaintext) > WEBPUSH_MAX_PLAINTEXT_BYTES:
            over = len(plaintext) - WEBPUSH_MAX_PLAINTEXT_BYTES
            return Rejected(f"web push payload is {over} bytes over 3993")
        async with self._in_flight:
            try:
                return await self._post(session, message, subscription, plaintext)
            except NETWORK_ERRORS as error:
                if refused_target(error) is not None:
                    return InvalidTarget(f"web push {REFUSED}")
                # The detail goes to the log only: stored, it would tell a caller which
                # ports of the host its endpoint names are open.
                log.info(
                    "web push endpoint unreachable",
                    delivery_id=message.delivery_id,
                    error=f"{type(error).__name__}: {error}",
                )
                return Retry(UNREACHABLE)

    async def _post(
        self,
        session: aiohttp.ClientSession,
        message: OutboundMessage,
        subscription: dict[str, Any],
        plaintext: bytes,
    ) -> Outcome:
        endpoint: str = subscription["endpoint"]
        keys = subscription["keys"]
        body = encrypt_payload(plaintext, _b64(keys["p256dh"]), _b64(keys["auth"]))
        async with session.post(
            endpoint, data=body, headers=self._headers(message, endpoint), allow_redirects=False
        ) as response:
            await response.read()
            return classify_webpush_response(response.status, response.headers, self.clock.time())

    def _headers(self, message: OutboundMessage, endpoint: str) -> dict[str, str]:
        headers = {
            "Authorization": self.vapid.authorization(endpoint),
            "TTL": str(message.ttl_seconds(self.clock.now())),
            "Urgency": URGENCY_BY_PRIORITY[message.priority],
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        if message.collapse_key:
            headers["Topic"] = webpush_topic(message.collapse_key)
        return headers


def _b64(value: str) -> bytes:
    raw = decode_b64url(value)
    assert raw is not None  # validated by validate_web_subscription
    return raw


def classify_webpush_response(status: int, headers: Any, now: float) -> Outcome:
    """Map a push service's answer onto an outcome (docs/providers.md, Web Push table). Each is
    about this endpoint only: a 401/403 (a subscription made for another VAPID key, or an
    endpoint that is no push service at all) fails this message and opens no circuit."""
    if 200 <= status < 300:
        return Accepted(provider_message_id=headers.get("Location"))
    reason = f"web push {status}"
    if status in (404, 410):
        return InvalidTarget(reason)
    if status in (401, 403):
        return Rejected(f"{reason}: VAPID key refused for this subscription")
    if 300 <= status < 400:
        return Rejected(f"{reason}: redirects are not followed")
    if status == 429 or status >= 500:
        return Retry(reason, parse_retry_after(headers.get("Retry-After"), now))
    return Rejected(reason)
