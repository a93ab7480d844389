"""The pure payload builders and device checks the API uses at accept time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from herald.providers.apns.payload import APNS_MAX_PAYLOAD_BYTES, apns_payload, apns_payload_size
from herald.providers.fcm.payload import FCM_MAX_PAYLOAD_BYTES, fcm_message, fcm_payload_size
from herald.providers.push_http import DELIVERY_ID_KEY
from herald.providers.push_payloads import (
    PLAIN_ENVELOPE_BOUND,
    check_push_size,
    surely_fits,
    validate_push_device,
)
from herald.providers.webpush.payload import WEBPUSH_MAX_PLAINTEXT_BYTES, webpush_payload_size
from tests.providers.conftest import apns_token, b64url, fcm_token

SizeOf = Callable[[str | None, str | None, Mapping[str, Any] | None], int]


def _p256dh() -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return b64url(
        public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def _keys(p256dh: bytes | None = None, auth: bytes = b"0123456789abcdef") -> dict[str, str]:
    return {"p256dh": b64url(p256dh) if p256dh else _p256dh(), "auth": b64url(auth)}


def _subscription(**overrides: object) -> dict[str, object]:
    keys = {"p256dh": _p256dh(), "auth": b64url(b"0123456789abcdef")}
    return {"endpoint": "https://push.example.net/wpush/v2/abc", "keys": keys} | overrides


def test_fcm_message_converts_data_and_maps_options() -> None:
    body = fcm_message(
        "tok",
        "T",
        None,
        {"n": 1, "list": [1, 2], "s": "x", "none": None},
        delivery_id="d-1",
        ttl_seconds=30,
        collapse_key="c",
        high_priority=True,
    )
    assert body == {
        "message": {
            "token": "tok",
            "notification": {"title": "T"},
            "data": {"n": "1", "list": "[1,2]", "s": "x", "none": "null", DELIVERY_ID_KEY: "d-1"},
            "android": {"ttl": "30s", "priority": "high", "collapse_key": "c"},
        }
    }


def test_apns_payload_cannot_be_overridden_by_custom_aps_key() -> None:
    payload = apns_payload(
        "T", "B", {"aps": "evil", "k": 1}, delivery_id="d", rich={"badge": 3, "sound": "ding"}
    )
    assert payload == {
        "k": 1,
        DELIVERY_ID_KEY: "d",
        "aps": {"alert": {"title": "T", "body": "B"}, "badge": 3, "sound": "ding"},
    }


@pytest.mark.parametrize(
    ("platform", "size_of", "limit"),
    [
        ("android", fcm_payload_size, FCM_MAX_PAYLOAD_BYTES),
        ("ios", apns_payload_size, APNS_MAX_PAYLOAD_BYTES),
        ("web", webpush_payload_size, WEBPUSH_MAX_PLAINTEXT_BYTES),
    ],
)
def test_check_push_size_at_the_limit(platform: str, size_of: SizeOf, limit: int) -> None:
    base = size_of(None, None, {"blob": ""})
    fits = {"blob": "x" * (limit - base)}
    over = {"blob": "x" * (limit - base + 5)}
    assert check_push_size(platform, None, None, fits) is None
    assert check_push_size(platform, None, None, over) == 5


SIZES: list[SizeOf] = [fcm_payload_size, apns_payload_size, webpush_payload_size]
LIMITS = {
    fcm_payload_size: FCM_MAX_PAYLOAD_BYTES,
    apns_payload_size: APNS_MAX_PAYLOAD_BYTES,
    webpush_payload_size: WEBPUSH_MAX_PLAINTEXT_BYTES,
}
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=40,
)


@pytest.mark.parametrize("size_of", SIZES)
def test_every_plain_envelope_is_within_the_bound(size_of: SizeOf) -> None:
    assert 2 * size_of("", "", {}) <= PLAIN_ENVELOPE_BOUND


@given(
    title=st.none() | st.text(max_size=1500),
    body=st.none() | st.text(max_size=1500),
    data=st.none() | st.dictionaries(st.text(max_size=20), _json, max_size=8),
)
def test_surely_fits_never_passes_what_a_platform_refuses(
    title: str | None, body: str | None, data: dict[str, Any] | None
) -> None:
    if surely_fits(title, body, data):
        for size_of in SIZES:
            assert size_of(title, body, data) <= LIMITS[size_of]


def test_check_push_size_counts_utf8_bytes() -> None:
    assert check_push_size("fcm", "é" * 2100, None, None) is not None  # 4200 bytes, 2100 chars


def test_check_push_size_refuses_unknown_platform() -> None:
    with pytest.raises(ValueError, match="unknown push platform"):
        check_push_size("pager", "t", "b", None)


VALID_DEVICES = {
    "fcm token": ("android", fcm_token(), None),
    "apns 32-byte token": ("ios", apns_token(), None),
    "apns 100-byte token": ("apns", "ab" * 100, None),
    "apns upper-case hex": ("ios", apns_token().upper(), None),
    "web subscription": ("web", None, _subscription()),
}

INVALID_DEVICES = {
    "fcm too short": ("android", "abc:def", None, "100 to 4096"),
    "fcm bad characters": ("android", "a" * 150 + " /+", None, "only letters"),
    "apns odd length": ("ios", "a" * 65, None, "even number"),
    "apns too short": ("ios", "ab" * 16, None, "between 64 and 200"),
    "apns too long": ("ios", "ab" * 101, None, "between 64 and 200"),
    "apns not hex": ("ios", "z" * 64, None, "hexadecimal"),
    "web no subscription": ("web", None, None, "needs a subscription"),
    "web http endpoint": ("web", None, _subscription(endpoint="http://push.example/x"), "https"),
    "web no keys": ("web", None, _subscription(keys=None), "p256dh and auth"),
    "web short p256dh": ("web", None, _subscription(keys=_keys(p256dh=b"\x04" * 33)), "65-byte"),
    "web p256dh off the curve": (
        "web", None, _subscription(keys=_keys(p256dh=b"\x04" + b"\x01" * 64)), "not a point"
    ),
    "web auth 12 bytes": ("web", None, _subscription(keys=_keys(auth=b"a" * 12)), "16 bytes"),
    "web auth standard base64": (
        "web", None, _subscription(keys={**_keys(), "auth": "ab+/ab+/ab+/ab+/ab+/ag"}), "16 bytes"
    ),
    "unknown platform": ("pager", "x", None, "unknown push platform"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("platform", "token", "subscription"), VALID_DEVICES.values(), ids=VALID_DEVICES.keys()
)
def test_valid_devices(
    platform: str, token: str | None, subscription: dict[str, object] | None
) -> None:
    assert validate_push_device(platform, token, subscription) is None


@pytest.mark.parametrize(
    ("platform", "token", "subscription", "message"),
    INVALID_DEVICES.values(),
    ids=INVALID_DEVICES.keys(),
)
def test_invalid_devices(
    platform: str, token: str | None, subscription: dict[str, object] | None, message: str
) -> None:
    error = validate_push_device(platform, token, subscription)
    assert error is not None
    assert message in error
