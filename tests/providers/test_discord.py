"""Discord against its fake: an embed, no mentions, 429's retry_after, deleted webhooks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Rejected, Retry
from herald.fakes.discord import FakeDiscord
from herald.fakes.tls import LocalTls
from herald.providers.caller_http import Answer
from herald.providers.discord import DiscordProvider
from herald.providers.discord.client import classify
from herald.providers.targets import TargetPolicy
from tests.providers.conftest import address_message


@pytest.fixture
async def discord(local_tls: LocalTls) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(tls=local_tls) as server:
        yield server


@pytest.fixture
async def provider(local_tls: LocalTls) -> AsyncIterator[DiscordProvider]:
    provider = DiscordProvider(targets=TargetPolicy(allow_private=True), ca_file=local_tls.ca_file)
    yield provider
    await provider.close()


async def test_embed_arrives_without_mentions(
    discord: FakeDiscord, provider: DiscordProvider
) -> None:
    url = discord.create_webhook()
    message = address_message(
        Channel.CHAT,
        url,
        title="Deployed",
        body="@everyone v2 is live",
        data={"version": "2.0"},
        platform="discord",
    )
    [outcome] = await provider.send([message])
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id  # ?wait=true: Discord answered the message
    [post] = discord.received
    assert post.body["allowed_mentions"] == {"parse": []}
    assert post.body["embeds"] == [
        {
            "title": "Deployed",
            "description": "@everyone v2 is live",
            "fields": [{"name": "version", "value": "2.0", "inline": True}],
        }
    ]


async def test_429_retries_after_retry_after_and_a_deleted_webhook_is_gone(
    discord: FakeDiscord, provider: DiscordProvider
) -> None:
    limited, deleted = discord.create_webhook(), discord.create_webhook()
    discord.rate_limit(limited, retry_after=2.5)
    discord.delete_webhook(deleted)
    wrong_token = discord.create_webhook().rsplit("/", 1)[0] + "/not-the-token"
    later, gone, bad_token = await provider.send(
        [
            address_message(Channel.CHAT, url, platform="discord")
            for url in (limited, deleted, wrong_token)
        ]
    )
    assert isinstance(later, Retry)
    assert later.after == 2.5
    assert gone == InvalidTarget("discord 404 10015 Unknown Webhook")
    assert bad_token == InvalidTarget("discord 401 50027 Invalid Webhook Token")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (204, b"", Accepted),
        (400, b'{"message": "Cannot send an empty message", "code": 50006}', Rejected),
        (400, b'{"message": "Invalid Form Body", "code": 50035}', Rejected),
        (403, b'{"message": "Missing Access", "code": 50001}', InvalidTarget),
        (429, b'{"retry_after": 1.25, "global": true}', Retry),
        (500, b"", Retry),
    ],
)
def test_every_answer_class_maps_to_its_outcome(status: int, body: bytes, kind: type) -> None:
    outcome = classify(Answer(status, {}, body))
    assert isinstance(outcome, kind)
    if status == 429:
        assert outcome == Retry("discord 429", after=1.25)
