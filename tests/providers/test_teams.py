"""Microsoft Teams against its fake: an Adaptive Card to Workflows and connector URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Rejected, Retry
from herald.fakes.teams import FakeTeams
from herald.fakes.tls import LocalTls
from herald.providers.caller_http import Answer
from herald.providers.targets import TargetPolicy
from herald.providers.teams import TeamsProvider
from herald.providers.teams.client import classify
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


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (202, b"", Accepted),
        (200, b"1", Accepted),
        (200, b"Microsoft Teams endpoint returned HTTP error 429", Retry),
        (400, b"Bad payload", Rejected),
        (413, b"too large", Rejected),
        (404, b"Not Found", InvalidTarget),
        (410, b"Gone", InvalidTarget),
        (502, b"", Retry),
    ],
)
def test_every_answer_class_maps_to_its_outcome(status: int, body: bytes, kind: type) -> None:
    assert isinstance(classify(Answer(status, {}, body)), kind)
