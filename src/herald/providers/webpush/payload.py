"""Web Push: what the service worker receives (before encryption), its size, the
subscription check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from herald.providers.push_http import (
    PLACEHOLDER_DELIVERY_ID,
    decode_b64url,
    json_bytes,
    title_body,
)

# One aes128gcm record of 4096 bytes: 4096 - 86 (header) - 16 (tag) - 1 (padding delimiter).
WEBPUSH_MAX_PLAINTEXT_BYTES = 3993
WEBPUSH_MAX_TOPIC_CHARS = 32
_WEB_ENDPOINT_MAX_CHARS = 2048


def webpush_plaintext(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    *,
    delivery_id: str,
    rich: Mapping[str, Any] | None = None,
) -> bytes:
    """What the service worker receives (before encryption): JSON of the notification,
    with a rich push's members named as `showNotification` options take them (image,
    actions [{action, title}], tag), so the worker passes them on as they are."""
    rich = rich or {}
    document: dict[str, Any] = title_body(title, body)
    document["data"] = dict(data or {})
    document["delivery_id"] = delivery_id
    if rich.get("image"):
        document["image"] = rich["image"]
    if rich.get("actions"):
        document["actions"] = [{"action": a["id"], "title": a["title"]} for a in rich["actions"]]
    if rich.get("thread_id"):
        document["tag"] = rich["thread_id"]
    if rich.get("interruption_level") in ("time-sensitive", "critical"):
        document["requireInteraction"] = True
    return json_bytes(document)


def webpush_payload_size(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    rich: Mapping[str, Any] | None = None,
) -> int:
    plaintext = webpush_plaintext(title, body, data, delivery_id=PLACEHOLDER_DELIVERY_ID, rich=rich)
    return len(plaintext)


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
