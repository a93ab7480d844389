"""A protocol-faithful fake Web Push service (RFC 8030/8291/8292), shaped like Mozilla's
autopush: it hands out subscriptions (it generates the browser-side keys), checks the VAPID
header (ES256 signature, aud, exp, sub), requires TTL, and decrypts every aes128gcm body with
http_ece and the subscription's private key, recording the plaintext."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.fakes.common import (
    FakeServer,
    Fault,
    Request,
    Response,
    b64url_decode,
    b64url_encode,
    json_response,
    retry_after_headers,
)

MAX_BODY_BYTES = 4096
MAX_VAPID_LIFETIME = 24 * 3600
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
_PUSH_PATH_RE = re.compile(r"^/wpush/v2/(?P<id>[A-Za-z0-9_-]+)$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    410: "Gone",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class _Subscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None
    active: bool = True


@dataclass(frozen=True, slots=True)
class WebPushReceived:
    subscription_id: str
    endpoint: str
    plaintext: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    vapid_claims: dict[str, Any]


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakeWebPush(FakeServer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received: list[WebPushReceived] = []
        self._subscriptions: dict[str, _Subscription] = {}
        self._redirects: dict[str, tuple[int, str]] = {}

    # --- set-up and scripting ----------------------------------------------------------

    def subscribe(self, application_server_key: str | None = None) -> dict[str, Any]:
        """A new subscription as a browser's PushSubscription.toJSON() gives it. With
        `application_server_key` (base64url public key) only that VAPID key may push."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        subscription = _Subscription(
            id=secrets.token_urlsafe(16),
            private_key=private_key,
            auth=secrets.token_bytes(16),
            application_server_key=application_server_key,
        )
        self._subscriptions[subscription.id] = subscription
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self._endpoint(subscription.id),
            "keys": {"p256dh": b64url_encode(public), "auth": b64url_encode(subscription.auth)},
        }

    def unsubscribe(self, endpoint: str) -> None:
        """The browser dropped the subscription: pushes to it now answer 410 Gone."""
        self._subscriptions[_subscription_id(endpoint)].active = False

    def fail(
        self,
        endpoint: str,
        status: int,
        *,
        times: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.faults.add(_subscription_id(endpoint), Fault(str(status), times, retry_after))

    def redirect(self, endpoint: str, status: int, location: str) -> None:
        """Pushes to `endpoint` answer `status` (3xx) with `Location: location`, as a hostile
        endpoint would to bounce Herald's request somewhere else."""
        self._redirects[_subscription_id(endpoint)] = (status, location)

    # --- serving -----------------------------------------------------------------------

    def unavailable(self) -> Response:
        return webpush_error(503, "Service Unavailable")

    async def handle(self, request: Request) -> Response:
        match = _PUSH_PATH_RE.match(request.path)
        subscription = self._subscriptions.get(match["id"]) if match else None
        if subscription is None:
            return webpush_error(404, "Subscription not found")
        if subscription.id in self._redirects:
            status, location = self._redirects[subscription.id]
            return Response(status, b"", (("location", location),))
        if request.method != "POST":
            return webpush_error(405, "Method not allowed")
        if not subscription.active:
            return webpush_error(410, "Subscription expired")
        try:
            claims = self._check_vapid(request.header("authorization"), subscription)
            ttl, urgency, topic = _check_headers(request)
        except _Refusal as refusal:
            return webpush_error(refusal.status, refusal.message)
        fault = self.faults.take(subscription.id)
        if fault is not None:
            return webpush_error(int(fault.kind), "Injected failure", retry_after_headers(fault))
        try:
            plaintext = self._decrypt(request.body, subscription)
        except _Refusal as refusal:
            return webpush_error(refusal.status, refusal.message)
        self.received.append(
            WebPushReceived(
                subscription.id,
                self._endpoint(subscription.id),
                plaintext,
                ttl,
                urgency,
                topic,
                claims,
            )
        )
        location = f"{self.base_url}/m/{uuid.uuid4().hex}"
        return Response(201, b"", (("location", location), ("ttl", str(ttl))))

    def _endpoint(self, subscription_id: str) -> str:
        return f"{self.base_url}/wpush/v2/{subscription_id}"

    def _check_vapid(
        self, authorization: str | None, subscription: _Subscription
    ) -> dict[str, Any]:
        token, key = _parse_vapid(authorization)
        if subscription.application_server_key and key != subscription.application_server_key:
            raise _Refusal(403, "VAPID key does not match the subscription's applicationServerKey")
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b64url_decode(key)
            )
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                audience=self.base_url,
                options={"verify_exp": False, "require": ["aud", "exp", "sub"]},
            )
        except (ValueError, jwt.PyJWTError) as error:
            raise _Refusal(401, f"Invalid VAPID token: {error}") from error
        _check_vapid_claims(claims, self.clock.time())
        return claims

    def _decrypt(self, body: bytes, subscription: _Subscription) -> bytes:
        if len(body) > MAX_BODY_BYTES:
            raise _Refusal(413, "Payload too large")
        try:
            plaintext: bytes = http_ece.decrypt(
                body,
                private_key=subscription.private_key,
                auth_secret=subscription.auth,
                version="aes128gcm",
            )
        except Exception as error:  # http_ece raises ECEException and crypto errors alike
            raise _Refusal(400, f"Cannot decrypt the payload: {error}") from error
        return plaintext


def _parse_vapid(authorization: str | None) -> tuple[str, str]:
    if not authorization or not authorization.lower().startswith("vapid "):
        raise _Refusal(401, "Missing VAPID authorization")
    params = {}
    for part in authorization[len("vapid ") :].split(","):
        name, _, value = part.strip().partition("=")
        params[name.strip()] = value.strip()
    if not params.get("t") or not params.get("k"):
        raise _Refusal(401, "VAPID authorization needs t= and k=")
    return params["t"], params["k"]


def _check_vapid_claims(claims: dict[str, Any], now: float) -> None:
    exp = float(claims["exp"])
    if exp <= now:
        raise _Refusal(401, "VAPID token expired")
    if exp > now + MAX_VAPID_LIFETIME:
        raise _Refusal(401, "VAPID exp is more than 24 hours ahead")
    if not str(claims["sub"]).startswith(("mailto:", "https:")):
        raise _Refusal(401, "VAPID sub must be a mailto: or https: URL")


def _check_headers(request: Request) -> tuple[int, str | None, str | None]:
    ttl = request.header("ttl")
    if ttl is None or not ttl.isdigit():
        raise _Refusal(400, "Missing or invalid TTL header")
    if request.header("content-encoding") != "aes128gcm":
        raise _Refusal(400, "Content-Encoding must be aes128gcm")  # status unconfirmed
    urgency = request.header("urgency")
    if urgency is not None and urgency not in URGENCIES:
        raise _Refusal(400, "Invalid Urgency header")
    topic = request.header("topic")
    if topic is not None and not _TOPIC_RE.match(topic):
        raise _Refusal(400, "Topic must be at most 32 base64url characters")
    return int(ttl), urgency, topic


def _subscription_id(endpoint: str) -> str:
    return endpoint.rstrip("/").rsplit("/", 1)[-1]


def webpush_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = {
        "code": status,
        "errno": status,
        "error": _STATUS_TEXT.get(status, "Error"),
        "message": message,
    }
    return json_response(status, body, headers)
