"""What the chat providers (Slack, Microsoft Teams, Discord) share: a notification's data
as (name, value) text pairs, and truncation to a service's limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

CHAT_SERVICES = ("slack", "teams", "discord")


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def data_fields(data: Mapping[str, Any] | None, *, limit: int) -> list[tuple[str, str]]:
    """The data's keys and values as text, at most `limit` of them (strings as they are,
    anything else as JSON)."""
    pairs = []
    for key, value in list((data or {}).items())[:limit]:
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        pairs.append((str(key), text))
    return pairs


def fallback_text(title: str | None, body: str | None) -> str:
    """One line for notifications and clients that show no rich layout."""
    return ": ".join(part for part in (title, body) if part) or "(no text)"
