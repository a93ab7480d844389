"""A protocol-faithful fake of APNs' provider API: HTTP/2 over TLS (hypercorn), token-based
auth with ES256 JWTs verified against the team's public key, header and payload checks, and
Apple's documented status codes and `{"reason"}` bodies."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.fakes.common import (
    FakeServer,
    Fault,
    Request,
    Response,
    json_response,
    retry_after_headers,
)
from herald.providers.apns.payload import (
    APNS_MAX_COLLAPSE_ID_BYTES,
    APNS_MAX_PAYLOAD_BYTES,
    validate_apns_token,
)

# Apple's reasons and their statuses (docs/providers.md, APNs table; BadPath/MethodNotAllowed from
# Apple's documentation of the same table).
APNS_REASONS: dict[str, int] = {
    "BadCollapseId": 400,
    "BadDeviceToken": 400,
    "BadExpirationDate": 400,
    "BadMessageId": 400,
    "BadPriority": 400,
    "BadTopic": 400,
    "DeviceTokenNotForTopic": 400,
    "DuplicateHeaders": 400,
    "IdleTimeout": 400,
    "InvalidPushType": 400,
    "MissingTopic": 400,
    "PayloadEmpty": 400,
    "TopicDisallowed": 400,
    "BadCertificate": 403,
    "BadCertificateEnvironment": 403,
    "ExpiredProviderToken": 403,
    "Forbidden": 403,
    "InvalidProviderToken": 403,
    "MissingProviderToken": 403,
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
PROVIDER_TOKEN_MAX_AGE = 3600
# Apple does not publish how many token changes count as "too often" (unconfirmed): allow a
# few within 20 minutes, so a forced refresh after ExpiredProviderToken passes.
TOKEN_UPDATE_WINDOW = 20 * 60
MAX_TOKEN_UPDATES_PER_WINDOW = 3
_DEVICE_PATH_RE = re.compile(r"^/3/device/(?P<token>[^/]+)$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


@dataclass(frozen=True, slots=True)
class _SigningKey:
    team_id: str
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class ApnsReceived:
    device_token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    provider_token: str


INTERRUPTION_LEVELS = frozenset({"passive", "active", "time-sensitive", "critical"})


def _aps_member_is_valid(key: str, value: Any) -> bool:
    if key == "badge":
        return isinstance(value, int) and value >= 0
    if key == "sound":
        return isinstance(value, str | dict)
    if key in ("thread-id", "category"):
        return isinstance(value, str)
    if key in ("mutable-content", "content-available"):
        return bool(value == 1)
    if key == "interruption-level":
        return value in INTERRUPTION_LEVELS
    if key == "relevance-score":
        return isinstance(value, int | float) and 0 <= value <= 1
    return True


def _aps_is_valid(aps: dict[str, Any]) -> bool:
    """The aps members Herald sends, as Apple's payload reference types them."""
    return all(_aps_member_is_valid(key, value) for key, value in aps.items())


class _Refusal(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FakeApns(FakeServer):
    def __init__(
        self,
        *,
        topics: frozenset[str] = frozenset({"com.example.herald"}),
        max_token_updates: int = MAX_TOKEN_UPDATES_PER_WINDOW,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_concurrent_streams", 1000)
        super().__init__(**kwargs)
        self.topics = topics
        self.max_token_updates = max_token_updates
        self.received: list[ApnsReceived] = []
        self.provider_tokens: list[str] = []  # distinct tokens in order of first use
        self._token_updates: dict[str, list[float]] = {}
        self._keys: dict[str, _SigningKey] = {}

    # --- set-up and scripting ----------------------------------------------------------

    def create_signing_key(self, team_id: str = "TEAM123456") -> tuple[str, bytes]:
        """A new .p8-style key (PEM, PKCS#8) this fake trusts, with its 10-character key id."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        key_id = secrets.token_hex(5).upper()
        self.trust_key(key_id, team_id, private_key.public_key())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_id, pem

    def trust_key(self, key_id: str, team_id: str, public_key: ec.EllipticCurvePublicKey) -> None:
        self._keys[key_id] = _SigningKey(team_id, public_key)

    def fail(
        self,
        device_token: str,
        reason: str,
        *,
        times: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer Apple's `reason` (a key of APNS_REASONS) to pushes for this device."""
        if reason not in APNS_REASONS:
            raise ValueError(f"unknown APNs reason {reason!r}")
        self.faults.add(device_token, Fault(reason, times, retry_after))

    # --- serving -----------------------------------------------------------------------

    def unavailable(self) -> Response:
        return apns_error("ServiceUnavailable")

    async def handle(self, request: Request) -> Response:
        match = _DEVICE_PATH_RE.match(request.path)
        if match is None:
            return apns_error("BadPath")
        if request.method != "POST":
            return apns_error("MethodNotAllowed")
        try:
            provider_token = self._authenticate(request.header("authorization"))
            payload = self._check(match["token"], request)
        except _Refusal as refusal:
            return apns_error(refusal.reason)
        fault = self.faults.take(match["token"])
        if fault is not None:
            return apns_error(fault.kind, retry_after_headers(fault), self.clock.time())
        apns_id = request.header("apns-id") or str(uuid.uuid4())
        headers = {k: v for k, v in request.headers.items() if k.startswith("apns-")}
        self.received.append(ApnsReceived(match["token"], headers, payload, provider_token))
        return Response(200, b"", (("apns-id", apns_id),))

    def _authenticate(self, authorization: str | None) -> str:
        if not authorization:
            raise _Refusal("MissingProviderToken")
        if not authorization.startswith("bearer "):
            raise _Refusal("InvalidProviderToken")
        token = authorization.removeprefix("bearer ")
        claims = self._verify(token)
        if self.clock.time() - float(claims["iat"]) > PROVIDER_TOKEN_MAX_AGE:
            raise _Refusal("ExpiredProviderToken")
        if token not in self.provider_tokens:
            self._count_token_update(claims["iss"])
            self.provider_tokens.append(token)
        return token

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if key is None or header.get("alg") != "ES256":
                raise _Refusal("InvalidProviderToken")
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=["ES256"],
                options={"verify_iat": False, "verify_exp": False, "require": ["iss", "iat"]},
            )
        except jwt.PyJWTError as error:
            raise _Refusal("InvalidProviderToken") from error
        if claims["iss"] != key.team_id:
            raise _Refusal("InvalidProviderToken")
        return claims

    def _count_token_update(self, team_id: str) -> None:
        now = self.clock.time()
        recent = [t for t in self._token_updates.get(team_id, []) if now - t < TOKEN_UPDATE_WINDOW]
        if len(recent) >= self.max_token_updates:
            raise _Refusal("TooManyProviderTokenUpdates")
        self._token_updates[team_id] = [*recent, now]

    def _check(self, device_token: str, request: Request) -> dict[str, Any]:
        if any("\x00" in value for value in request.headers.values()):
            raise _Refusal("DuplicateHeaders")
        self._check_headers(request)
        if validate_apns_token(device_token):
            raise _Refusal("BadDeviceToken")
        if not request.body:
            raise _Refusal("PayloadEmpty")
        if len(request.body) > APNS_MAX_PAYLOAD_BYTES:
            raise _Refusal("PayloadTooLarge")
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError as error:
            # Apple documents no reason for malformed JSON (unconfirmed): BadPayload.
            raise _Refusal("BadPayload") from error
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            raise _Refusal("BadPayload")
        if not _aps_is_valid(payload["aps"]):
            raise _Refusal("BadPayload")  # Apple names no reason for a bad aps member
        return payload

    def _check_headers(self, request: Request) -> None:
        topic = request.header("apns-topic")
        if not topic:
            raise _Refusal("MissingTopic")
        if topic not in self.topics:
            raise _Refusal("TopicDisallowed")
        push_type = request.header("apns-push-type")
        if push_type not in PUSH_TYPES:
            raise _Refusal("InvalidPushType")
        if request.header("apns-priority") not in (None, "5", "10", "1"):
            raise _Refusal("BadPriority")
        expiration = request.header("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            raise _Refusal("BadExpirationDate")
        apns_id = request.header("apns-id")
        if apns_id is not None and not _UUID_RE.match(apns_id):
            raise _Refusal("BadMessageId")
        collapse_id = request.header("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > APNS_MAX_COLLAPSE_ID_BYTES:
            raise _Refusal("BadCollapseId")


def apns_error(
    reason: str, headers: tuple[tuple[str, str], ...] = (), now: float | None = None
) -> Response:
    status = APNS_REASONS.get(reason, 400)
    body: dict[str, Any] = {"reason": reason}
    if status == 410 and now is not None:
        body["timestamp"] = int(now * 1000)
    return json_response(status, body, headers)
