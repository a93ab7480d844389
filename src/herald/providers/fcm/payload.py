"""FCM HTTP v1: the `messages:send` body, its size rule, the registration-token check."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from herald.providers.push_http import (
    DELIVERY_ID_KEY,
    PLACEHOLDER_DELIVERY_ID,
    json_bytes,
    title_body,
)

FCM_MAX_PAYLOAD_BYTES = 4096
ACTIONS_KEY = "herald_actions"
# FCM registration tokens are opaque; Google documents neither alphabet nor length. Observed
# tokens are about 140-170 characters of [A-Za-z0-9_-] with one ':'. The bounds below are
# deliberately loose (unconfirmed) so a future longer token is not refused.
FCM_TOKEN_MIN_CHARS = 100
FCM_TOKEN_MAX_CHARS = 4096
_FCM_TOKEN_RE = re.compile(r"^[A-Za-z0-9_:\-]+$")


def fcm_data(data: Mapping[str, Any] | None, delivery_id: str) -> dict[str, str]:
    """FCM `data` takes only string values: strings pass, everything else becomes JSON."""
    converted = {key: _as_string(value) for key, value in (data or {}).items()}
    converted[DELIVERY_ID_KEY] = delivery_id
    return converted


def _as_string(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def fcm_content(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    delivery_id: str,
    rich: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `notification` and `data` members: what FCM's 4096-byte limit is about. A rich
    push's image is `notification.image`; its action buttons, which FCM has no member for,
    travel in data (`herald_actions`) for the app to draw."""
    rich = rich or {}
    content: dict[str, Any] = {}
    notification = title_body(title, body)
    if notification and rich.get("image"):
        notification["image"] = rich["image"]
    if notification:
        content["notification"] = notification
    content["data"] = fcm_data(data, delivery_id)
    if rich.get("actions"):
        content["data"][ACTIONS_KEY] = _as_string(rich["actions"])
    return content


def android_notification(rich: Mapping[str, Any]) -> dict[str, Any]:
    """`android.notification`: thread -> tag (a newer one replaces it in the tray), the
    action category -> click_action, badge -> notification_count, sound."""
    found: dict[str, Any] = {}
    for key, member in (
        ("thread_id", "tag"),
        ("action_category", "click_action"),
        ("badge", "notification_count"),
        ("sound", "sound"),
    ):
        if rich.get(key) is not None:
            found[member] = rich[key]
    return found


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
    rich: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The request body of `messages:send`."""
    android: dict[str, Any] = {
        "ttl": f"{ttl_seconds}s",
        "priority": "high" if high_priority else "normal",
    }
    if collapse_key:
        android["collapse_key"] = collapse_key
    content = fcm_content(title, body, data, delivery_id, rich)
    if "notification" in content and (extra := android_notification(rich or {})):
        android["notification"] = extra
    message = {"token": token, **content, "android": android}
    return {"message": message}


def fcm_payload_size(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    rich: Mapping[str, Any] | None = None,
) -> int:
    # Which bytes FCM counts is not documented precisely (unconfirmed): we count the JSON of
    # `notification` + `data`, the same rule the fake enforces.
    return len(json_bytes(fcm_content(title, body, data, PLACEHOLDER_DELIVERY_ID, rich)))


def validate_fcm_token(token: str) -> str | None:
    if not FCM_TOKEN_MIN_CHARS <= len(token) <= FCM_TOKEN_MAX_CHARS:
        return (
            f"FCM registration token must be {FCM_TOKEN_MIN_CHARS} to "
            f"{FCM_TOKEN_MAX_CHARS} characters, got {len(token)}"
        )
    if not _FCM_TOKEN_RE.match(token):
        return "FCM registration token may contain only letters, digits, '_', '-' and ':'"
    return None
