"""Pure functions that build each push platform's body and check it, shared by the push
providers and by the API (to refuse an oversized notification or a malformed device at accept
time instead of at send time).

Platforms: "android"/"fcm" (FCM HTTP v1), "ios"/"apns" (APNs), "web"/"webpush" (Web Push).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric import ec

FCM = "fcm"
APNS = "apns"
WEBPUSH = "webpush"

FCM_MAX_PAYLOAD_BYTES = 4096
APNS_MAX_PAYLOAD_BYTES = 4096
# One aes128gcm record of 4096 bytes: 4096 - 86 (header) - 16 (tag) - 1 (padding delimiter).
WEBPUSH_MAX_PLAINTEXT_BYTES = 3993
APNS_MAX_COLLAPSE_ID_BYTES = 64
WEBPUSH_MAX_TOPIC_CHARS = 32

DELIVERY_ID_KEY = "herald_delivery_id"
# Size checks at accept time run before a delivery id exists: a UUID has this length.
_PLACEHOLDER_DELIVERY_ID = "00000000-0000-0000-0000-000000000000"

_PLATFORM_ALIASES = {
    "android": FCM,
    "fcm": FCM,
    "ios": APNS,
    "apns": APNS,
    "web": WEBPUSH,
    "webpush": WEBPUSH,
}

# FCM registration tokens are opaque; Google documents neither alphabet nor length. Observed
# tokens are about 140-170 characters of [A-Za-z0-9_-] with one ':'. The bounds below are
# deliberately loose (unconfirmed) so a future longer token is not refused.
FCM_TOKEN_MIN_CHARS = 100
FCM_TOKEN_MAX_CHARS = 4096
_FCM_TOKEN_RE = re.compile(r"^[A-Za-z0-9_:\-]+$")
# Apple moved to variable-length tokens; today they are 32 bytes (64 hex characters).
APNS_TOKEN_MIN_HEX = 64
APNS_TOKEN_MAX_HEX = 200
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_\-]+={0,2}$")
_WEB_ENDPOINT_MAX_CHARS = 2048


def platform_kind(platform: str) -> str | None:
    """ "fcm", "apns" or "webpush" for a platform name or alias, None when unknown."""
    return _PLATFORM_ALIASES.get(platform.lower())


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


# --- FCM -------------------------------------------------------------------------------


def fcm_data(data: Mapping[str, Any] | None, delivery_id: str) -> dict[str, str]:
    """FCM `data` takes only string values: strings pass, everything else becomes JSON."""
    converted = {key: _as_string(value) for key, value in (data or {}).items()}
    converted[DELIVERY_ID_KEY] = delivery_id
    return converted


def _as_string(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def fcm_content(
    title: str | None, body: str | None, data: Mapping[str, Any] | None, delivery_id: str
) -> dict[str, Any]:
    """The `notification` and `data` members: what FCM's 4096-byte limit is about."""
    content: dict[str, Any] = {}
    notification = _title_body(title, body)
    if notification:
        content["notification"] = notification
    content["data"] = fcm_data(data, delivery_id)
    return content


def fcm_message(
    token: str,
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    *,
    delivery_id: str,
    ttl_seconds: int,
    collapse_key: str | None = None,
    high_priority: bool = False,
) -> dict[str, Any]:
    """The request body of `messages:send`."""
    android: dict[str, Any] = {
        "ttl": f"{ttl_seconds}s",
        "priority": "high" if high_priority else "normal",
    }
    if collapse_key:
        android["collapse_key"] = collapse_key
    message = {"token": token, **fcm_content(title, body, data, delivery_id), "android": android}
    return {"message": message}


def fcm_payload_size(title: str | None, body: str | None, data: Mapping[str, Any] | None) -> int:
    # Which bytes FCM counts is not documented precisely (unconfirmed): we count the JSON of
    # `notification` + `data`, the same rule the fake enforces.
    return len(json_bytes(fcm_content(title, body, data, _PLACEHOLDER_DELIVERY_ID)))


# --- APNs ------------------------------------------------------------------------------


def apns_payload(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    *,
    delivery_id: str,
    badge: int | None = None,
    sound: str | None = None,
) -> dict[str, Any]:
    """`aps` plus the custom keys at the top level; a data-only message is a background push
    (`content-available`). A custom key named "aps" cannot override Apple's dictionary."""
    aps: dict[str, Any] = {}
    alert = _title_body(title, body)
    if alert:
        aps["alert"] = alert
    else:
        aps["content-available"] = 1
    if badge is not None:
        aps["badge"] = badge
    if sound is not None:
        aps["sound"] = sound
    custom = {key: value for key, value in (data or {}).items() if key != "aps"}
    return {**custom, DELIVERY_ID_KEY: delivery_id, "aps": aps}


def apns_is_alert(title: str | None, body: str | None) -> bool:
    return bool(title or body)


def apns_payload_size(title: str | None, body: str | None, data: Mapping[str, Any] | None) -> int:
    return len(json_bytes(apns_payload(title, body, data, delivery_id=_PLACEHOLDER_DELIVERY_ID)))


# --- Web Push --------------------------------------------------------------------------


def webpush_plaintext(
    title: str | None, body: str | None, data: Mapping[str, Any] | None, *, delivery_id: str
) -> bytes:
    """What the service worker receives (before encryption): JSON of the notification."""
    document: dict[str, Any] = _title_body(title, body)
    document["data"] = dict(data or {})
    document["delivery_id"] = delivery_id
    return json_bytes(document)


def webpush_payload_size(
    title: str | None, body: str | None, data: Mapping[str, Any] | None
) -> int:
    return len(webpush_plaintext(title, body, data, delivery_id=_PLACEHOLDER_DELIVERY_ID))


# --- Checks ----------------------------------------------------------------------------


def check_push_size(
    platform: str, title: str | None, body: str | None, data: Mapping[str, Any] | None
) -> int | None:
    """How many bytes the platform's body is over its limit, None when it fits."""
    kind = platform_kind(platform)
    if kind is None:
        raise ValueError(f"unknown push platform {platform!r}")
    size, limit = {
        FCM: lambda: (fcm_payload_size(title, body, data), FCM_MAX_PAYLOAD_BYTES),
        APNS: lambda: (apns_payload_size(title, body, data), APNS_MAX_PAYLOAD_BYTES),
        WEBPUSH: lambda: (webpush_payload_size(title, body, data), WEBPUSH_MAX_PLAINTEXT_BYTES),
    }[kind]()
    return size - limit if size > limit else None


def validate_push_device(
    platform: str, token: str | None, subscription: Mapping[str, Any] | None = None
) -> str | None:
    """An error message for a malformed device registration, None when it looks valid."""
    kind = platform_kind(platform)
    if kind is None:
        return f"unknown push platform {platform!r}"
    if kind == FCM:
        return validate_fcm_token(token or "")
    if kind == APNS:
        return validate_apns_token(token or "")
    return validate_web_subscription(subscription)


def validate_fcm_token(token: str) -> str | None:
    if not FCM_TOKEN_MIN_CHARS <= len(token) <= FCM_TOKEN_MAX_CHARS:
        return (
            f"FCM registration token must be {FCM_TOKEN_MIN_CHARS} to "
            f"{FCM_TOKEN_MAX_CHARS} characters, got {len(token)}"
        )
    if not _FCM_TOKEN_RE.match(token):
        return "FCM registration token may contain only letters, digits, '_', '-' and ':'"
    return None


def validate_apns_token(token: str) -> str | None:
    if not _HEX_RE.match(token):
        return "APNs device token must be hexadecimal"
    if len(token) % 2 or not APNS_TOKEN_MIN_HEX <= len(token) <= APNS_TOKEN_MAX_HEX:
        return (
            f"APNs device token must be an even number of hex digits between "
            f"{APNS_TOKEN_MIN_HEX} and {APNS_TOKEN_MAX_HEX}, got {len(token)}"
        )
    return None


def validate_web_subscription(subscription: Mapping[str, Any] | None) -> str | None:
    if not isinstance(subscription, Mapping):
        return "web push needs a subscription {endpoint, keys: {p256dh, auth}}"
    endpoint_error = _endpoint_error(subscription.get("endpoint"))
    if endpoint_error:
        return endpoint_error
    keys = subscription.get("keys")
    if not isinstance(keys, Mapping):
        return "subscription.keys must hold p256dh and auth"
    return _p256dh_error(keys.get("p256dh")) or _auth_error(keys.get("auth"))


def _endpoint_error(endpoint: Any) -> str | None:
    if not isinstance(endpoint, str) or len(endpoint) > _WEB_ENDPOINT_MAX_CHARS:
        return f"subscription.endpoint must be a URL of at most {_WEB_ENDPOINT_MAX_CHARS} chars"
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        return "subscription.endpoint must be an https URL"
    return None


def _p256dh_error(value: Any) -> str | None:
    raw = decode_b64url(value)
    if raw is None or len(raw) != 65 or raw[0] != 0x04:
        return "subscription.keys.p256dh must be base64url of a 65-byte uncompressed P-256 point"
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return "subscription.keys.p256dh is not a point on P-256"
    return None


def _auth_error(value: Any) -> str | None:
    raw = decode_b64url(value)
    if raw is None or len(raw) != 16:
        return "subscription.keys.auth must be base64url of 16 bytes"
    return None


def decode_b64url(value: Any) -> bytes | None:
    """base64url (padding optional) to bytes, None when `value` is not such a string."""
    if not isinstance(value, str) or not _B64URL_RE.match(value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


def _title_body(title: str | None, body: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if title:
        fields["title"] = title
    if body:
        fields["body"] = body
    return fields
