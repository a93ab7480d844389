"""The preference center: the signed link from the email payload, saving, and links that
were tampered with or have expired."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from herald.clock import FakeClock
from herald.domain import User
from herald.runtime import Runtime
from tests.fixtures.console import csrf_of
from tests.fixtures.herald import Pipeline, eventually
from tests.fixtures.sends import sandbox_rows

USER = {"email": "ada@example.com", "timezone": "UTC"}


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


async def test_the_email_payload_links_the_preference_center(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/42", json=USER)
    await api.post(
        "/v1/notifications",
        json={"user_id": "42", "category": "news", "title": "Hi", "channels": ["email"]},
    )
    (row,) = await eventually(lambda: sandbox_rows(api, user_id="42"))
    payload = row["payload"]
    assert "/v1/unsubscribe?token=" in payload["unsubscribe_url"]
    assert "/preferences?token=" in payload["preferences_url"]


async def test_turning_email_off_for_a_category_applies_to_the_next_notification(
    api: httpx.AsyncClient,
    browser_client: httpx.AsyncClient,
    runtime: Runtime,
    pipeline: Pipeline,
) -> None:
    await api.put("/v1/users/42", json=USER)
    url = runtime.preferences_url("42", "news")
    page = await browser_client.get(url.removeprefix(runtime.settings.effective_public_url))
    assert page.status_code == 200
    form = {
        "token": _token(url),
        "csrf": csrf_of(page.text),
        "timezone": "Europe/Berlin",
        **{f"all:{c}": "on" for c in ("email", "push", "sms", "in_app")},
        **{f"c:news:{c}": "on" for c in ("push", "sms", "in_app")},  # email unticked
    }
    saved = await browser_client.post("/preferences", data=form)
    assert saved.status_code == 200
    assert "Saved" in saved.text
    preferences = (await api.get("/v1/users/42/preferences")).json()
    assert preferences["categories"]["news"]["email"] is False
    assert preferences["quiet_hours"] is None
    assert (await api.get("/v1/users/42")).json()["timezone"] == "Europe/Berlin"

    created = await api.post(
        "/v1/notifications",
        json={"user_id": "42", "category": "news", "title": "x", "channels": ["email"]},
    )
    notification_id = created.json()["id"]

    async def email() -> dict[str, str] | None:
        body = (await api.get(f"/v1/notifications/{notification_id}")).json()
        found = [d for d in body["deliveries"] if d["channel"] == "email"]
        return found[0] if found else None

    delivery = await eventually(email)
    assert delivery["status"] == "skipped"

    quiet = {**form, "quiet": "on", "quiet_start": "22:00", "quiet_end": "07:00"}
    assert (await browser_client.post("/preferences", data=quiet)).status_code == 200
    preferences = (await api.get("/v1/users/42/preferences")).json()
    assert preferences["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    wrong = {**quiet, "quiet_end": "22:00"}
    refused = await browser_client.post("/preferences", data=wrong)
    assert refused.status_code == 422
    assert "differ" in refused.text


@pytest.mark.parametrize("damage", ["tamper", "truncate", "other purpose", "missing"])
async def test_a_bad_link_gets_a_clear_page(
    browser_client: httpx.AsyncClient, runtime: Runtime, damage: str
) -> None:
    await runtime.storage.directory.upsert_user(User("42"))
    token = _token(runtime.preferences_url("42", "news"))
    bad = {
        "tamper": token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "truncate": token[: len(token) // 2],
        "other purpose": _token(runtime.unsubscribe_url("42", "news")),
        "missing": "",
    }[damage]
    page = await browser_client.get("/preferences", params={"token": bad})
    assert page.status_code == 400
    assert "This link is not valid" in page.text
    posted = await browser_client.post("/preferences", data={"token": bad})
    assert posted.status_code == 400


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_an_expired_link_says_so(
    browser_client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await runtime.storage.directory.upsert_user(User("42"))
    url = runtime.preferences_url("42", "news")
    clock.advance(timedelta(days=61).total_seconds())
    page = await browser_client.get("/preferences", params={"token": _token(url)})
    assert page.status_code == 410
    assert "expired" in page.text


async def test_one_click_unsubscribe_still_works(api: httpx.AsyncClient, runtime: Runtime) -> None:
    await api.put("/v1/users/42", json=USER)
    url = runtime.unsubscribe_url("42", "news")
    response = await api.post(
        url.removeprefix(runtime.settings.effective_public_url),
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    preferences = (await api.get("/v1/users/42/preferences")).json()
    assert preferences["categories"]["news"]["email"] is False
