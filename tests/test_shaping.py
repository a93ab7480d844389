"""Digests and frequency caps through the whole running pipeline, on both backend sets: what
the user ends up receiving, and when. Time is a FakeClock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from herald.clock import FakeClock
from tests.fixtures.herald import Pipeline, eventually

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DIGEST_TEMPLATE = {
    "default_locale": "en",
    "locales": {
        "en": {
            "in_app": {
                "title": "{{ digest.count }} stories",
                "body": "{% for item in digest.notifications %}{{ item.title }};{% endfor %}",
            }
        }
    },
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def send(api: httpx.AsyncClient, key: str, **fields: Any) -> str:
    body = {"user_id": "u", "category": "news", "channels": ["in_app"], **fields}
    accepted = await api.post("/v1/notifications", json=body, headers={"Idempotency-Key": key})
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


async def inbox(api: httpx.AsyncClient) -> list[tuple[str, str]]:
    items = (await api.get("/v1/users/u/inbox")).json()["items"]
    return sorted((i["title"], i["body"] or "") for i in items)


async def statuses(api: httpx.AsyncClient, notification_id: str) -> list[str]:
    body = (await api.get(f"/v1/notifications/{notification_id}")).json()
    return [d["status"] for d in body["deliveries"]]


async def test_a_digest_reaches_the_user_once_rendered_from_its_template(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.put("/v1/templates/news-digest", json=DIGEST_TEMPLATE)
    digest = {"in_app": {"window_seconds": 3600, "template": "news-digest"}}
    assert (await api.put("/v1/categories/news", json={"digest": digest})).status_code == 201
    ids = []
    for n in range(3):
        ids.append(await send(api, f"story-{n}", title=f"story {n}"))
        clock.advance(1)
    urgent = await send(api, "urgent", title="breach", priority="critical")
    for notification_id in ids:
        await eventually(lambda n=notification_id: _is(api, n, ["digested"]))
    await eventually(lambda: _is(api, urgent, ["delivered"]))
    assert await inbox(api) == [("breach", "")]  # the critical one bypassed the digest

    [window] = (await api.get("/v1/users/u/digests")).json()["items"]
    assert (window["state"], window["item_count"]) == ("open", 3)
    clock.advance(3600 - 3)
    expected = [("3 stories", "story 0;story 1;story 2;"), ("breach", "")]
    assert await eventually(lambda: _inbox_is(api, expected)) == expected
    [closed] = (await api.get("/v1/users/u/digests")).json()["items"]
    assert closed["state"] == "closed"
    # The inbox item is written by the send, the status by the record that follows it.
    await eventually(lambda: _is(api, closed["notification_id"], ["delivered"]))
    clock.advance(7200)
    await pipeline.runtime.scheduler().tick()
    assert await inbox(api) == expected  # closed once, delivered once


async def test_over_the_cap_notifications_wait_for_the_next_window(
    api: httpx.AsyncClient, pipeline: Pipeline, clock: FakeClock
) -> None:
    await api.put("/v1/users/u", json={"timezone": "UTC"})
    await api.put("/v1/frequency-caps/in_app", json={"limit": 2, "window_seconds": 3600})
    ids = [await send(api, f"promo-{n}", title=f"promo {n}") for n in range(5)]
    await send(api, "otp", title="code 1234", priority="critical")

    async def received() -> int:
        return len(await inbox(api))

    for expected in (3, 5, 6):  # 2 + the critical one, then 2 per window
        assert await eventually(lambda n=expected: _count_is(received, n)) == expected
        clock.advance(3600)
    for notification_id in ids:  # the inbox shows a send before its status is recorded
        await eventually(lambda n=notification_id: _is(api, n, ["delivered"]))


async def _is(api: httpx.AsyncClient, notification_id: str, expected: list[str]) -> bool:
    return await statuses(api, notification_id) == expected


async def _inbox_is(api: httpx.AsyncClient, expected: list[tuple[str, str]]) -> Any:
    found = await inbox(api)
    return found if found == expected else None


async def _count_is(count: Any, expected: int) -> int | None:
    found: int = await count()
    return found if found == expected else None
