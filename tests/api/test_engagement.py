"""Engagement through the API, on both backends: app reports (API key or the user's own
inbox token), in-app reads, the email open pixel and click redirects (signed, no open
redirect, switchable per category). The first report of a kind counts, once."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx
import pytest

from herald.metrics import METRICS
from tests.fixtures.herald import Pipeline, eventually

LINK_TEMPLATE = {
    "default_locale": "en",
    "locales": {
        "en": {
            "email": {
                "subject": "Your order",
                "text": "See https://shop.example/orders/1",
                "html": '<html><body><p><a href="https://shop.example/orders/1?a=1&amp;b=2">'
                'Order</a> <a href="mailto:help@shop.example">help</a></p></body></html>',
            }
        }
    },
}


async def user(api: httpx.AsyncClient, user_id: str) -> None:
    body = {"email": f"{user_id}@example.com", "timezone": "UTC"}
    assert (await api.put(f"/v1/users/{user_id}", json=body)).status_code in (200, 201)


async def notify(api: httpx.AsyncClient, user_id: str, key: str, **fields: Any) -> str:
    body = {"user_id": user_id, "title": "Hello", "body": "there", **fields}
    response = await api.post("/v1/notifications", json=body, headers={"Idempotency-Key": key})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def sent_delivery(api: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = (await api.get(f"/v1/notifications/{notification_id}")).json()
        done = [d for d in body["deliveries"] if d["status"] in ("sent", "delivered")]
        return done[0] if done else None

    return dict(await eventually(check))


async def delivery(api: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    [only] = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"]
    return dict(only)


async def log_states(api: httpx.AsyncClient, notification_id: str) -> list[str]:
    events = (await api.get(f"/v1/notifications/{notification_id}/events")).json()["items"]
    return [e["status"] for e in events]


async def inbox_token(api: httpx.AsyncClient, user_id: str) -> str:
    return str((await api.post(f"/v1/users/{user_id}/inbox-token")).json()["token"])


async def test_the_first_report_of_each_kind_counts_once(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await user(api, "u")
    notification_id = await notify(api, "u", "n1", channels=["in_app"])
    target = await sent_delivery(api, notification_id)
    counter = METRICS.engagement.labels("opened", "in_app", "default")
    before = counter._value.get()
    url = f"/v1/deliveries/{target['id']}/engagement"
    first = await api.post(url, json={"event": "opened"})
    assert (first.status_code, first.json()["first"]) == (200, True)
    repeat = await api.post(url, json={"event": "opened"})
    assert (repeat.status_code, repeat.json()["first"]) == (200, False)
    assert (await api.post(url, json={"event": "clicked"})).json()["first"] is True

    shown = await delivery(api, notification_id)
    assert shown["opened_at"] is not None
    assert shown["clicked_at"] is not None
    assert shown["read_at"] is None
    assert shown["dismissed_at"] is None
    states = await log_states(api, notification_id)
    assert (states.count("opened"), states.count("clicked")) == (1, 1)
    assert counter._value.get() == before + 1


async def test_an_inbox_token_reports_for_its_own_user_only(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await user(api, "u")
    await user(api, "v")
    mine = await sent_delivery(api, await notify(api, "u", "mine", channels=["in_app"]))
    theirs = await sent_delivery(api, await notify(api, "v", "theirs", channels=["in_app"]))
    token = {"Authorization": f"Bearer {await inbox_token(api, 'u')}"}
    event = {"event": "dismissed"}
    own = await api.post(f"/v1/deliveries/{mine['id']}/engagement", json=event, headers=token)
    assert own.status_code == 200, own.text
    other = await api.post(f"/v1/deliveries/{theirs['id']}/engagement", json=event, headers=token)
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "forbidden"
    unknown = await api.post("/v1/deliveries/nope/engagement", json=event, headers=token)
    assert unknown.status_code == 404
    bad = await api.post(f"/v1/deliveries/{mine['id']}/engagement", json={"event": "liked"})
    assert bad.status_code == 422
    no_auth = await api.post(
        f"/v1/deliveries/{mine['id']}/engagement", json=event, headers={"Authorization": ""}
    )
    assert no_auth.status_code == 401


@pytest.mark.parametrize("how", ["one", "all"])
async def test_reading_an_inbox_item_marks_its_delivery_read(
    api: httpx.AsyncClient, pipeline: Pipeline, how: str
) -> None:
    await user(api, "u")
    notification_id = await notify(api, "u", "n1", channels=["in_app"])
    await sent_delivery(api, notification_id)
    [item] = (await api.get("/v1/users/u/inbox")).json()["items"]
    path = f"/v1/users/u/inbox/{item['id']}/read" if how == "one" else "/v1/users/u/inbox/read-all"
    for _ in range(2):
        assert (await api.post(path)).status_code in (200, 204)
    assert (await delivery(api, notification_id))["read_at"] is not None
    assert (await log_states(api, notification_id)).count("read") == 1


def tracked_links(html: str) -> list[str]:
    return [unescape(href) for href in re.findall(r'href="([^"]+)"', html)]


def pixel_url(html: str) -> str:
    [src] = re.findall(r'<img src="([^"]+)"', html)
    return unescape(src)


async def email_html(api: httpx.AsyncClient, notification_id: str) -> str:
    await sent_delivery(api, notification_id)
    [message] = (await api.get("/v1/sandbox/messages", params={"channel": "email"})).json()["items"]
    return str(message["payload"]["html"])


async def test_email_opens_and_clicks_are_tracked_through_signed_urls(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await user(api, "u")
    await api.put("/v1/templates/order", json=LINK_TEMPLATE)
    notification_id = await notify(api, "u", "n1", channels=["email"], template="order")
    html = await email_html(api, notification_id)
    order, mailto = tracked_links(html)
    assert "/v1/track/click/" in order
    assert mailto == "mailto:help@shop.example"
    public = pipeline.runtime.settings.effective_public_url

    pixel = await api.get(pixel_url(html).removeprefix(public))
    assert (pixel.status_code, pixel.headers["content-type"]) == (200, "image/gif")
    click_path = order.removeprefix(public)
    assert click_path.startswith("/v1/track/click/")
    click = await api.get(click_path)
    assert click.status_code == 302
    assert click.headers["location"] == "https://shop.example/orders/1?a=1&b=2"
    await api.get(click_path)  # a second click counts nothing

    shown = await delivery(api, notification_id)
    assert shown["opened_at"] is not None
    assert shown["clicked_at"] is not None
    states = await log_states(api, notification_id)
    assert (states.count("opened"), states.count("clicked")) == (1, 1)

    # No open redirect: a link whose token was altered goes nowhere.
    forged = click_path[:-4] + ("AAAA" if not click_path.endswith("AAAA") else "BBBB")
    refused = await api.get(forged)
    assert refused.status_code == 404
    assert "location" not in refused.headers


async def test_an_email_without_a_template_is_tracked_in_its_default_layout(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    # Its HTML part is made from the title and body; tracking it must not wait for the
    # provider to make it, or the pixel would never be in what was sent.
    await user(api, "u")
    notification_id = await notify(api, "u", "n1", channels=["email"], title="Paid <3")
    html = await email_html(api, notification_id)
    assert "Paid &lt;3" in html
    public = pipeline.runtime.settings.effective_public_url
    pixel = await api.get(pixel_url(html).removeprefix(public))
    assert pixel.status_code == 200
    assert (await delivery(api, notification_id))["opened_at"] is not None


async def test_a_category_can_switch_email_tracking_off(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await user(api, "u")
    await api.put("/v1/templates/order", json=LINK_TEMPLATE)
    off = {"tracking": {"opens": False, "clicks": False}}
    assert (await api.put("/v1/categories/receipts", json=off)).status_code == 201
    notification_id = await notify(
        api, "u", "n1", channels=["email"], template="order", category="receipts"
    )
    html = await email_html(api, notification_id)
    assert "/v1/track/" not in html
    assert tracked_links(html)[0] == "https://shop.example/orders/1?a=1&b=2"
