"""A Discord webhook message: one embed (title, description, fields from data) with
Discord's limits (title 256, description 4096, 25 fields of 256/1024, 6000 characters in
all), and `allowed_mentions` empty so user text cannot ping @everyone or a role."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from herald.providers.chat import data_fields, fallback_text, truncate

TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
CONTENT_MAX = 2000


def embed(title: str | None, body: str | None, data: Mapping[str, Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if title:
        found["title"] = truncate(title, TITLE_MAX)
    if body:
        found["description"] = truncate(body, DESCRIPTION_MAX)
    fields = [
        {
            "name": truncate(k, FIELD_NAME_MAX),
            "value": truncate(v, FIELD_VALUE_MAX) or "-",
            "inline": True,
        }
        for k, v in data_fields(data, limit=FIELDS_MAX)
    ]
    if fields:
        found["fields"] = fields
    return found


def message(payload: Mapping[str, Any]) -> dict[str, Any]:
    title, body, data = payload.get("title"), payload.get("body"), payload.get("data")
    document: dict[str, Any] = {"allowed_mentions": {"parse": []}}
    rich = embed(title, body, data)
    if rich:
        document["embeds"] = [rich]
    else:
        document["content"] = truncate(fallback_text(title, body), CONTENT_MAX)
    return document
