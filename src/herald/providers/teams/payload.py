"""An Adaptive Card (schema 1.4, what Teams renders from incoming webhooks and Workflows)
in the message envelope both accept: title (bold TextBlock), body (wrapped TextBlock) and
data (a FactSet). Teams renders a subset of Markdown in TextBlock text, so its emphasis,
link and code characters in user text are escaped."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from herald.providers.chat import data_fields, truncate

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
FACTS_MAX = 20
TEXT_MAX = 4000
# The characters of the Markdown subset Teams renders in a TextBlock (emphasis, links,
# code); list markers are left alone, a backslash before them would show.
_MARKDOWN = re.compile(r"([\\`*_\[\]()~])")


def escape(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text)


def card(title: str | None, body: str | None, data: Mapping[str, Any] | None) -> dict[str, Any]:
    elements: list[dict[str, Any]] = []
    if title:
        elements.append(
            {
                "type": "TextBlock",
                "text": truncate(escape(title), TEXT_MAX),
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "style": "heading",
            }
        )
    if body:
        elements.append(
            {"type": "TextBlock", "text": truncate(escape(body), TEXT_MAX), "wrap": True}
        )
    facts = [
        {"title": escape(k), "value": escape(v)} for k, v in data_fields(data, limit=FACTS_MAX)
    ]
    if facts:
        elements.append({"type": "FactSet", "facts": facts})
    return {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": elements,
    }


def message(payload: Mapping[str, Any]) -> dict[str, Any]:
    content = card(payload.get("title"), payload.get("body"), payload.get("data"))
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": content}],
    }
