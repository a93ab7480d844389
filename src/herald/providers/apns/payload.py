"""APNs: the JSON payload (`aps` plus custom keys), its size, the device-token check."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from herald.providers.push_http import (
    DELIVERY_ID_KEY,
    PLACEHOLDER_DELIVERY_ID,
    json_bytes,
    title_body,
)

APNS_MAX_PAYLOAD_BYTES = 4096
IMAGE_KEY = "herald_image_url"
ACTIONS_KEY = "herald_actions"
# Rich push field -> its `aps` member.
APS_MEMBERS = (
    ("badge", "badge"),
    ("sound", "sound"),
    ("thread_id", "thread-id"),
    ("action_category", "category"),
    ("interruption_level", "interruption-level"),
    ("relevance_score", "relevance-score"),
)
APNS_MAX_COLLAPSE_ID_BYTES = 64
# Apple moved to variable-length tokens; today they are 32 bytes (64 hex characters).
APNS_TOKEN_MIN_HEX = 64
APNS_TOKEN_MAX_HEX = 200
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


def apns_payload(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    *,
    delivery_id: str,
    rich: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`aps` plus the custom keys at the top level; a data-only message is a background push
    (`content-available`). A custom key named "aps" cannot override Apple's dictionary.

    A rich push maps to `aps`: badge, sound, thread-id, category (the app's registered
    action category), interruption-level, relevance-score; an image sets mutable-content
    so the app's notification service extension can fetch it from `herald_image_url`;
    action buttons travel in `herald_actions` (APNs draws the category's own)."""
    rich = rich or {}
    aps: dict[str, Any] = {}
    alert = title_body(title, body)
    if alert:
        aps["alert"] = alert
    else:
        aps["content-available"] = 1
    for key, member in APS_MEMBERS:
        if rich.get(key) is not None:
            aps[member] = rich[key]
    custom = {key: value for key, value in (data or {}).items() if key != "aps"}
    if rich.get("image") and alert:
        aps["mutable-content"] = 1
        custom[IMAGE_KEY] = rich["image"]
    if rich.get("actions"):
        custom[ACTIONS_KEY] = rich["actions"]
    return {**custom, DELIVERY_ID_KEY: delivery_id, "aps": aps}


def apns_is_alert(title: str | None, body: str | None) -> bool:
    return bool(title or body)


def apns_payload_size(
    title: str | None,
    body: str | None,
    data: Mapping[str, Any] | None,
    rich: Mapping[str, Any] | None = None,
) -> int:
    document = apns_payload(title, body, data, delivery_id=PLACEHOLDER_DELIVERY_ID, rich=rich)
    return len(json_bytes(document))


def validate_apns_token(token: str) -> str | None:
    if not _HEX_RE.match(token):
        return "APNs device token must be hexadecimal"
    if len(token) % 2 or not APNS_TOKEN_MIN_HEX <= len(token) <= APNS_TOKEN_MAX_HEX:
        return (
            f"APNs device token must be an even number of hex digits between "
            f"{APNS_TOKEN_MIN_HEX} and {APNS_TOKEN_MAX_HEX}, got {len(token)}"
        )
    return None
