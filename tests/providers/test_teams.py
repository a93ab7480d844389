"""Microsoft Teams against its fake: an Adaptive Card to Workflows and connector URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Retry
from herald.fakes.teams import FakeTeams
from herald.fakes.tls import LocalTls
from herald.providers.targets import TargetPolicy
from herald.providers.teams import TeamsProvider
from tests.providers.conftest import address_message


@pytest.fixture
async def teams(local_tls: LocalTls) -> AsyncIterator[FakeTeams]:
    async with FakeTeams(tls=local_tls) as server:
        yield server


@pytest.fixture
async def provider(local_tls: LocalTls) -> AsyncIterator[TeamsProvider]:
    provider = TeamsProvider(targets=TargetPolicy(allow_private=True), ca_file=local_tls.ca_file)
    yield provider
    await provider.close()


@pytest.mark.parametrize("workflow", [True, False])
async def test_adaptive_card_arrives(
    teams: FakeTeams, provider: TeamsProvider, workflow: bool
) -> None:
    url = teams.create_webhook(workflow=workflow)
    message = address_message(
        Channel.CHAT,
        url,
        title="Build *failed*",
        body="See [logs](x)",
        data={"job": "api"},
        platform="teams",
    )
    assert await provider.send([message]) == [Accepted()]
    [post] = teams.received
    assert post.card["type"] == "AdaptiveCard"
    title, body, facts = post.card["body"]
    assert title["text"] == r"Build \*failed\*"
    assert title["weight"] == "Bolder"
    assert body["text"] == r"See \[logs\]\(x\)"
    assert facts == {"type": "FactSet", "facts": [{"title": "job", "value": "api"}]}


async def test_a_removed_webhook_is_an_invalid_target_and_429_retries(
    teams: FakeTeams, provider: TeamsProvider
) -> None:
    removed, throttled = teams.create_webhook(), teams.create_webhook()
    teams.remove(removed)
    teams.throttle(throttled)
    gone, later = await provider.send(
        [
            address_message(Channel.CHAT, removed, platform="teams"),
            address_message(Channel.CHAT, throttled, platform="teams"),
        ]
    )
    assert isinstance(gone, InvalidTarget)
    assert isinstance(later, Retry)
    assert later.after == 1
