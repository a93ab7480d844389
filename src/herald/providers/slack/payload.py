"""Block Kit from a notification: a header block (title), a section (body, mrkdwn with
Slack's three escapes), and a section of fields (data); `text` is the fallback shown in
notifications. Limits from Slack's Block Kit reference: header 150, section text 3000,
10 fields of 2000."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from herald.providers.chat import data_fields, fallback_text, truncate

HEADER_MAX = 150
SECTION_MAX = 3000
FIELDS_MAX = 10
FIELD_MAX = 2000


def escape(text: str) -> str:
    """Slack's mrkdwn escapes: user text cannot make a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(title: str | None, body: str | None, data: Mapping[str, Any] | None) -> list[Any]:
    found: list[dict[str, Any]] = []
    if title:
        found.append(
            {"type": "header", "text": {"type": "plain_text", "text": truncate(title, HEADER_MAX)}}
        )
    if body:
        text = truncate(escape(body), SECTION_MAX)
        found.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    fields = [
        {"type": "mrkdwn", "text": truncate(f"*{escape(k)}*\n{escape(v)}", FIELD_MAX)}
        for k, v in data_fields(data, limit=FIELDS_MAX)
    ]
    if fields:
        found.append({"type": "section", "fields": fields})
    return found


def message(payload: Mapping[str, Any]) -> dict[str, Any]:
    title, body = payload.get("title"), payload.get("body")
    return {
        "text": escape(fallback_text(title, body)),
        "blocks": blocks(title, body, payload.get("data")),
    }
