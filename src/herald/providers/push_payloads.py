"""Which push platform a device is on, and the checks the API runs on a push to refuse an
oversized notification or a malformed device at accept time instead of at send time. Each
platform's body and rules live in its folder: fcm/payload.py, apns/payload.py,
webpush/payload.py.

Platforms: "android"/"fcm" (FCM HTTP v1), "ios"/"apns" (APNs), "web"/"webpush" (Web Push).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from herald.providers.apns.payload import (
    APNS_MAX_PAYLOAD_BYTES,
    apns_payload_size,
    validate_apns_token,
)
from herald.providers.fcm.payload import FCM_MAX_PAYLOAD_BYTES, fcm_payload_size, validate_fcm_token
from herald.providers.webpush.payload import (
    WEBPUSH_MAX_PLAINTEXT_BYTES,
    validate_web_subscription,
    webpush_payload_size,
)

FCM = "fcm"
APNS = "apns"
WEBPUSH = "webpush"

_PLATFORM_ALIASES = {
    "android": FCM,
    "fcm": FCM,
    "ios": APNS,
    "apns": APNS,
    "web": WEBPUSH,
    "webpush": WEBPUSH,
}


def platform_kind(platform: str) -> str | None:
    """ "fcm", "apns" or "webpush" for a platform name or alias, None when unknown."""
    return _PLATFORM_ALIASES.get(platform.lower())


# What a platform's body adds around a plain push's title, body and data: each builder's
# body with all three empty is under 100 bytes (tests/providers/test_push_payloads.py holds
# every platform to this bound).
PLAIN_ENVELOPE_BOUND = 256
_SMALLEST_LIMIT = min(APNS_MAX_PAYLOAD_BYTES, FCM_MAX_PAYLOAD_BYTES, WEBPUSH_MAX_PLAINTEXT_BYTES)


def surely_fits(title: str | None, body: str | None, data: Mapping[str, Any] | None) -> bool:
    """True when a plain push (no rich options) fits every platform, judged from one JSON
    encoding of its parts instead of building each platform's body: a body holds the parts
    at most twice over (FCM carries non-string data values as JSON strings, whose quotes are
    escaped) inside its envelope. Most pushes are far under the limits, and the API checks
    every one it accepts (docs/benchmarks.md, "Figures behind code choices")."""
    parts = len(orjson.dumps((title, body, data)))
    return 2 * parts + PLAIN_ENVELOPE_BOUND <= _SMALLEST_LIMIT


def check_push_size(
    platform: str,
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    rich: Mapping[str, Any] | None = None,
) -> int | None:
    """How many bytes the platform's body is over its limit, None when it fits."""
    kind = platform_kind(platform)
    if kind is None:
        raise ValueError(f"unknown push platform {platform!r}")
    if not rich and surely_fits(title, body, data):
        return None
    size, limit = {
        FCM: lambda: (fcm_payload_size(title, body, data, rich), FCM_MAX_PAYLOAD_BYTES),
        APNS: lambda: (apns_payload_size(title, body, data, rich), APNS_MAX_PAYLOAD_BYTES),
        WEBPUSH: lambda: (
            webpush_payload_size(title, body, data, rich),
            WEBPUSH_MAX_PLAINTEXT_BYTES,
        ),
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
