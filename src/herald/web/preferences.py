"""The preference center: the page an email's footer links to (`preferences_url` in the
email payload), signed and expiring like the unsubscribe link. The recipient sets each
channel per category, quiet hours and their time zone; the next notification is routed
with what they saved. A link that was tampered with or has expired gets a page saying so.
The RFC 8058 one-click unsubscribe (POST /v1/unsubscribe) is untouched."""

from __future__ import annotations

import dataclasses
from datetime import time
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from fastapi import APIRouter, Request, Response

from herald.api.schemas import check_timezone
from herald.domain import Channel
from herald.domain.preferences import Preferences
from herald.domain.quiet_hours import QuietHours
from herald.runtime import Runtime
from herald.security import TokenInvalid
from herald.web.pages import render
from herald.web.session import csrf_matches, csrf_token, form_fields

PURPOSE = "preferences"
# The channels a recipient chooses between (push covers every device).
CHANNELS = (Channel.EMAIL, Channel.PUSH, Channel.SMS, Channel.IN_APP)
LABELS = {
    Channel.EMAIL: "Email",
    Channel.PUSH: "Push",
    Channel.SMS: "SMS",
    Channel.IN_APP: "In app",
}

router = APIRouter(include_in_schema=False)


@cache
def timezones() -> list[str]:
    return sorted(available_timezones() | {"UTC"})


class LinkInvalid(Exception):
    def __init__(self, expired: bool) -> None:
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


def _claims(rt: Runtime, token: str | None) -> dict[str, Any]:
    if not token or len(token) > 2000:
        raise LinkInvalid(expired=False)
    try:
        return rt.signer.verify(PURPOSE, token, rt.clock.now())
    except TokenInvalid as error:
        raise LinkInvalid(expired="expired" in str(error)) from None


def _refused(error: LinkInvalid) -> Response:
    return render("preferences_invalid.html", 410 if error.expired else 400, expired=error.expired)


async def _categories(rt: Runtime, preferences: Preferences, own: str) -> list[str]:
    names = {name for name, _ in await rt.storage.directory.list_categories()}
    return sorted(names | set(preferences.categories) | {own, "default"})


async def _form(rt: Runtime, token: str, saved: bool = False, error: str | None = None) -> Response:
    claims = _claims(rt, token)
    user_id, category = str(claims["sub"]), str(claims.get("cat", "default"))
    user = await rt.storage.directory.get_user(user_id)
    preferences = await rt.storage.directory.get_preferences(user_id)
    if user is None or preferences is None:
        return render("preferences_invalid.html", 404, expired=False, gone=True)
    return render(
        "preferences.html",
        422 if error else 200,
        token=token,
        csrf=csrf_token(rt, _binding(claims)),
        user=user,
        category=category,
        categories=await _categories(rt, preferences, category),
        channels=[(c.value, LABELS[c]) for c in CHANNELS],
        preferences=preferences,
        timezones=timezones(),
        saved=saved,
        error=error,
    )


def _binding(claims: dict[str, Any]) -> str:
    return f"preferences:{claims['sub']}:{claims['exp']}"


@router.get("/preferences")
async def preference_center(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        return await _form(rt, request.query_params.get("token", ""))
    except LinkInvalid as error:
        return _refused(error)


@router.post("/preferences")
async def save_preferences(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    fields = await form_fields(request)
    token = fields.get("token", "")
    try:
        claims = _claims(rt, token)
    except LinkInvalid as error:
        return _refused(error)
    if not csrf_matches(rt, fields.get("csrf"), _binding(claims)):
        return await _form(rt, token, error="The form expired; it has been reloaded. Save again.")
    user_id = str(claims["sub"])
    user = await rt.storage.directory.get_user(user_id)
    current = await rt.storage.directory.get_preferences(user_id)
    if user is None or current is None:
        return render("preferences_invalid.html", 404, expired=False, gone=True)
    try:
        own = str(claims.get("cat", "default"))
        preferences, zone = _read_form(fields, await _categories(rt, current, own), current)
    except ValueError as problem:
        return await _form(rt, token, error=str(problem))
    await rt.storage.directory.put_preferences(user_id, preferences)
    if zone != user.timezone:
        await rt.storage.directory.upsert_user(dataclasses.replace(user, timezone=zone))
    return await _form(rt, token, saved=True)


def _read_form(
    fields: dict[str, str], categories: list[str], current: Preferences
) -> tuple[Preferences, str]:
    """The preferences a submitted form says. A checkbox that is not sent is off."""
    by_category: dict[str, dict[Channel, bool]] = {
        name: dict(choices) for name, choices in current.categories.items()
    }
    for name in categories:
        for channel in CHANNELS:
            by_category.setdefault(name, {})[channel] = f"c:{name}:{channel.value}" in fields
    channels = dict(current.channels)
    for channel in CHANNELS:
        channels[channel] = f"all:{channel.value}" in fields
    quiet = None
    if "quiet" in fields:
        try:
            quiet = QuietHours(
                time.fromisoformat(fields.get("quiet_start", "")),
                time.fromisoformat(fields.get("quiet_end", "")),
            )
        except ValueError:
            raise ValueError("Quiet hours need a start and an end time that differ.") from None
    try:
        zone = check_timezone(fields.get("timezone", "UTC"))
    except ValueError:
        raise ValueError("Pick a time zone from the list.") from None
    return Preferences(channels=channels, categories=by_category, quiet_hours=quiet), zone
