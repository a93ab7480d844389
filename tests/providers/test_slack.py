"""Slack against its fake: chat.postMessage with the bot token and incoming webhooks, Block
Kit from title/body/data, and each error's outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, ProviderDown, Rejected, Retry
from herald.fakes.slack import FakeSlack
from herald.fakes.tls import LocalTls
from herald.providers.base import OutboundMessage
from herald.providers.slack import SlackProvider
from herald.providers.targets import TargetPolicy
from tests.providers.conftest import address_message


@pytest.fixture
async def slack(local_tls: LocalTls) -> AsyncIterator[FakeSlack]:
    async with FakeSlack(tls=local_tls) as server:
        yield server


def provider_for(slack: FakeSlack, local_tls: LocalTls, token: str | None = "") -> SlackProvider:
    return SlackProvider(
        targets=TargetPolicy(allow_private=True),
        bot_token=slack.bot_token if token == "" else token,
        base_url=slack.base_url,
        ca_file=local_tls.ca_file,
    )


@pytest.fixture
async def provider(slack: FakeSlack, local_tls: LocalTls) -> AsyncIterator[SlackProvider]:
    provider = provider_for(slack, local_tls)
    yield provider
    await provider.close()


def to(target: str) -> OutboundMessage:
    return address_message(Channel.CHAT, target, platform="slack")


@pytest.mark.parametrize("via", ["api", "webhook"])
async def test_block_kit_arrives_escaped(
    slack: FakeSlack, provider: SlackProvider, via: str
) -> None:
    target = slack.create_channel() if via == "api" else slack.create_webhook()
    message = address_message(
        Channel.CHAT,
        target,
        title="Deploy <done>",
        body="by <@U123> & <!channel>",
        data={"build": 42, "branch": "main"},
        platform="slack",
    )
    [outcome] = await provider.send([message])
    assert isinstance(outcome, Accepted)
    [post] = slack.received
    assert post.via == via
    header, section, fields = post.body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Deploy <done>"}}
    assert section["text"] == {"type": "mrkdwn", "text": "by &lt;@U123&gt; &amp; &lt;!channel&gt;"}
    assert [f["text"] for f in fields["fields"]] == ["*build*\n42", "*branch*\nmain"]
    assert "<!channel>" not in post.body["text"]
    if via == "api":
        assert outcome.provider_message_id  # the message's ts


async def test_ratelimited_is_retried_after_retry_after(
    slack: FakeSlack, provider: SlackProvider
) -> None:
    channel, hook = slack.create_channel(), slack.create_webhook()
    slack.rate_limit(channel, retry_after=30)
    slack.rate_limit(hook, retry_after=12)
    outcomes = await provider.send([to(channel), to(hook)])
    assert outcomes == [
        Retry("slack ratelimited", after=30),
        Retry("slack webhook 429 rate_limited", after=12),
    ]


async def test_gone_channels_are_invalid_targets(slack: FakeSlack, provider: SlackProvider) -> None:
    archived_hook = slack.create_webhook("CARCHIVED1")
    slack.archive("CARCHIVED1")
    outcomes = await provider.send(
        [to("CNOSUCH123"), to(archived_hook), to(slack.base_url + "/services/T1/B1/revoked")]
    )
    assert [type(o) for o in outcomes] == [InvalidTarget] * 3
    assert outcomes[0] == InvalidTarget("slack channel_not_found")
    assert slack.received == []


async def test_a_bad_token_is_provider_down_and_no_token_is_rejected(
    slack: FakeSlack, local_tls: LocalTls
) -> None:
    channel = slack.create_channel()
    wrong, missing = (
        provider_for(slack, local_tls, "xoxb-wrong"),
        provider_for(slack, local_tls, None),
    )
    try:
        assert await wrong.send([to(channel)]) == [ProviderDown("slack invalid_auth")]
        [outcome] = await missing.send([to(channel)])
    finally:
        await wrong.close()
        await missing.close()
    assert isinstance(outcome, Rejected)
    assert "HERALD_SLACK_BOT_TOKEN" in outcome.reason
