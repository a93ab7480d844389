"""Channel addresses through the API (PUT/GET/DELETE /v1/users/{id}/channels/{kind}) and
a notification reaching them through the whole pipeline, on both backend sets: the
webhook receiver verifies the signature, Slack, Teams and Discord fakes get their formats."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from herald.config import Settings
from herald.fakes.discord import FakeDiscord
from herald.fakes.slack import FakeSlack
from herald.fakes.teams import FakeTeams
from herald.fakes.tls import generate_local_tls
from herald.fakes.webhook import FakeWebhookReceiver
from tests.fixtures.herald import Pipeline, eventually

USER = {"email": "ada@example.com", "timezone": "UTC"}


@dataclass
class ChatFakes:
    ca_file: Path
    webhooks: FakeWebhookReceiver
    slack: FakeSlack
    teams: FakeTeams
    discord: FakeDiscord


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[ChatFakes]:
    tls = generate_local_tls(tmp_path / "tls")
    servers = (
        FakeWebhookReceiver(tls=tls),
        FakeSlack(tls=tls),
        FakeTeams(tls=tls),
        FakeDiscord(tls=tls),
    )
    for server in servers:
        await server.start()
    try:
        yield ChatFakes(tls.ca_file, *servers)  # type: ignore[arg-type]
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
def allow_private() -> bool:
    return True  # the fakes listen on 127.0.0.1


@pytest.fixture
def settings_factory(
    settings_factory: Callable[..., Settings], fakes: ChatFakes, allow_private: bool
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        chat = {
            "allow_private_targets": allow_private,
            "ca_file": fakes.ca_file,
            "slack_bot_token": fakes.slack.bot_token,
            "slack_base_url": fakes.slack.base_url,
            "retry_base_seconds": 0.05,  # a retried webhook comes back at once
        }
        return settings_factory(**{**chat, **overrides})

    return make


@pytest.fixture
async def user(api: httpx.AsyncClient) -> str:
    assert (await api.put("/v1/users/42", json=USER)).status_code in (200, 201)
    return "42"


async def test_addresses_round_trip(api: httpx.AsyncClient, fakes: ChatFakes, user: str) -> None:
    url, _ = fakes.webhooks.endpoint()
    created = await api.put(f"/v1/users/{user}/channels/webhook", json={"url": url})
    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["channel"] == "webhook"
    assert body["target"] == f"https://{url.split('/')[2]}/…"  # the path stays private
    again = await api.put(f"/v1/users/{user}/channels/webhook", json={"url": url})
    assert again.status_code == 200
    assert again.json()["secret"] != body["secret"]  # a PUT without a secret rotates it
    slack = await api.put(f"/v1/users/{user}/channels/slack", json={"channel": "C0123ABCD"})
    assert slack.status_code == 201
    shown = (await api.get(f"/v1/users/{user}/channels/webhook")).json()
    assert "secret" not in shown
    assert shown["active"] is True
    listed = (await api.get(f"/v1/users/{user}/channels")).json()["items"]
    assert [a["kind"] for a in listed] == ["slack", "webhook"]
    assert (await api.delete(f"/v1/users/{user}/channels/slack")).status_code == 204
    assert (await api.get(f"/v1/users/{user}/channels/slack")).status_code == 404


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("webhook", {}, "url"),
        ("webhook", {"url": "http://hooks.example.com/x"}, "url"),
        (
            "webhook",
            {"url": "https://hooks.example.com/x", "secret": "whsec_!!!notbase64"},
            "secret",
        ),
        ("webhook", {"url": "https://hooks.example.com/x", "phone": "+14155550100"}, "phone"),
        ("slack", {"channel": "C0123ABCD", "url": "https://hooks.slack.com/x"}, "channel"),
        ("slack", {"channel": "general"}, "channel"),
        ("teams", {"url": "not a url"}, "url"),
        ("whatsapp", {"phone": "4155550100"}, "phone"),
        ("whatsapp", {"phone": "+14155550100"}, "phone"),  # WhatsApp is not configured
    ],
)
async def test_bad_addresses_are_422_naming_the_field(
    api: httpx.AsyncClient, user: str, kind: str, body: dict[str, Any], field: str
) -> None:
    answer = await api.put(f"/v1/users/{user}/channels/{kind}", json=body)
    assert answer.status_code == 422, answer.text
    assert [d["field"] for d in answer.json()["error"]["details"]] == [field]


async def test_unknown_kinds_and_users(api: httpx.AsyncClient, user: str) -> None:
    assert (await api.put(f"/v1/users/{user}/channels/fax", json={})).status_code == 422
    missing = await api.put("/v1/users/nobody/channels/teams", json={"url": "https://x.example"})
    assert missing.status_code == 404


@pytest.mark.parametrize("allow_private", [False])
@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3", "[::1]", "metadata.internal"]
)
async def test_private_targets_are_refused_at_registration(
    api: httpx.AsyncClient, user: str, host: str
) -> None:
    answer = await api.put(f"/v1/users/{user}/channels/discord", json={"url": f"https://{host}/x"})
    assert answer.status_code == 422
    [detail] = answer.json()["error"]["details"]
    assert detail["field"] == "url"


async def test_a_notification_reaches_every_chat_and_webhook_address(
    api: httpx.AsyncClient, pipeline: Pipeline, fakes: ChatFakes, user: str
) -> None:
    hook_url, secret = fakes.webhooks.endpoint()
    addresses = {
        "webhook": {"url": hook_url, "secret": secret},
        "slack": {"url": fakes.slack.create_webhook()},
        "teams": {"url": fakes.teams.create_webhook()},
        "discord": {"url": fakes.discord.create_webhook()},
    }
    for kind, body in addresses.items():
        assert (await api.put(f"/v1/users/{user}/channels/{kind}", json=body)).status_code == 201
    accepted = await api.post(
        "/v1/notifications",
        json={"user_id": user, "title": "Paid", "body": "€12 <received>", "data": {"order": 7}},
    )
    notification_id = accepted.json()["id"]

    async def arrived() -> bool:
        received = (fakes.webhooks.received, fakes.slack.received, fakes.teams.received)
        return all(received) and bool(fakes.discord.received)

    await eventually(arrived)
    [hook] = fakes.webhooks.received
    event = Webhook(secret).verify(hook.body, hook.headers)
    assert event["data"]["notification_id"] == notification_id
    assert event["data"]["body"] == "€12 <received>"
    assert fakes.slack.received[0].body["blocks"][1]["text"]["text"] == "€12 &lt;received&gt;"
    assert fakes.discord.received[0].body["embeds"][0]["title"] == "Paid"

    async def sent() -> list[dict[str, Any]] | None:
        found = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"]
        chat = [d for d in found if d["channel"] in ("chat", "webhook")]
        return chat if len(chat) == 4 and {d["status"] for d in chat} == {"sent"} else None

    deliveries = await eventually(sent)
    assert {d["provider"] for d in deliveries} == {"webhook", "slack", "teams", "discord"}
    assert all(d["target"].endswith("/…") for d in deliveries)


async def test_preferences_cover_chat_and_a_gone_webhook_is_deactivated(
    api: httpx.AsyncClient, pipeline: Pipeline, fakes: ChatFakes, user: str
) -> None:
    hook_url, secret = fakes.webhooks.endpoint()
    fakes.webhooks.answer(hook_url, 410)
    await api.put(f"/v1/users/{user}/channels/webhook", json={"url": hook_url, "secret": secret})
    await api.put(f"/v1/users/{user}/channels/slack", json={"url": fakes.slack.create_webhook()})
    await api.put(f"/v1/users/{user}/preferences", json={"channels": {"chat": False}})
    accepted = await api.post("/v1/notifications", json={"user_id": user, "title": "Hi"})
    notification_id = accepted.json()["id"]

    async def deactivated() -> dict[str, Any] | None:
        shown = (await api.get(f"/v1/users/{user}/channels/webhook")).json()
        return shown if shown["active"] is False else None

    shown = await eventually(deactivated)
    assert "410" in shown["deactivated_reason"]
    found = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"]
    by_channel = {d["channel"]: d for d in found}
    assert by_channel["webhook"]["status"] == "undeliverable"
    assert by_channel["chat"]["status"] == "skipped"  # the user turned chat off
    assert fakes.slack.received == []


async def test_a_failing_endpoint_is_retried_with_the_same_webhook_id(
    api: httpx.AsyncClient, pipeline: Pipeline, fakes: ChatFakes, user: str
) -> None:
    hook_url, secret = fakes.webhooks.endpoint()
    fakes.webhooks.answer(hook_url, 503, times=2)
    await api.put(f"/v1/users/{user}/channels/webhook", json={"url": hook_url, "secret": secret})
    accepted = await api.post("/v1/notifications", json={"user_id": user, "title": "Hi"})
    notification_id = accepted.json()["id"]

    async def delivered() -> dict[str, Any] | None:
        found = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"]
        hook = next((d for d in found if d["channel"] == "webhook"), None)
        return hook if hook and hook["status"] == "sent" else None

    delivery = await eventually(delivered)
    assert delivery["attempts"] == 3
    assert [webhook_id for _, webhook_id in fakes.webhooks.attempts] == [delivery["id"]] * 3
    [received] = fakes.webhooks.received
    Webhook(secret).verify(received.body, received.headers)
