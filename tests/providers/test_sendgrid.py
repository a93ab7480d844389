"""SendGridProvider against FakeSendGrid: the body SendGrid expects, the status table,
rate limits, and network failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.fakes.sendgrid import FakeSendGrid
from herald.providers.sendgrid.client import SendGridProvider
from tests.providers.conftest import email_message, free_tcp_port


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid(clock=clock) as server:
        yield server


def make_provider(base_url: str, api_key: str, clock: FakeClock) -> SendGridProvider:
    settings = Settings(
        sendgrid_api_key=api_key,
        sendgrid_base_url=base_url,
        email_from="Herald Alerts <alerts@herald.example>",
    )
    provider = SendGridProvider.from_settings(settings, clock)
    assert provider is not None
    return provider


@pytest.fixture
async def provider(fake: FakeSendGrid, clock: FakeClock) -> AsyncIterator[SendGridProvider]:
    provider = make_provider(fake.base_url, fake.api_key, clock)
    yield provider
    await provider.close()


def test_unconfigured_is_none() -> None:
    assert SendGridProvider.from_settings(Settings(sendgrid_api_key=None)) is None


async def test_success_sends_the_documented_body(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    message = email_message(
        "bob@example.com",
        subject="Grüße",
        text="plain",
        html="<p>html</p>",
        unsubscribe_url="https://herald.example/u/1",
    )
    [outcome] = await provider.send([message])

    [mail] = fake.received
    assert outcome == Accepted(provider_message_id=mail.message_id)
    assert mail.body["personalizations"] == [{"to": [{"email": "bob@example.com"}]}]
    assert mail.body["from"] == {"email": "alerts@herald.example", "name": "Herald Alerts"}
    assert mail.body["subject"] == "Grüße"
    text, html = mail.body["content"]
    assert text == {"type": "text/plain", "value": "plain"}
    assert html["type"] == "text/html"
    assert "<p>html</p>" in html["value"]  # the fragment, inside the layout
    assert 'href="https://herald.example/u/1"' in html["value"]
    assert mail.custom_args == {"herald_delivery_id": message.delivery_id}
    assert mail.body["headers"]["List-Unsubscribe"] == "<https://herald.example/u/1>"
    assert mail.body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_batch_keeps_order(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    fake.fail_address("bounce@example.com", 400)
    batch = [
        email_message("a@example.com"),
        email_message("bounce@example.com"),
        email_message("not an address"),
        email_message("b@example.com"),
    ]
    outcomes = await provider.send(batch)

    assert [type(o) for o in outcomes] == [Accepted, Rejected, InvalidTarget, Accepted]
    assert sorted(m.recipients[0] for m in fake.received) == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, Rejected),
        (413, Rejected),
        (401, ProviderDown),
        (403, ProviderDown),
        (429, Retry),
        (500, Retry),
        (503, Retry),
    ],
)
async def test_status_table(
    fake: FakeSendGrid, provider: SendGridProvider, status: int, expected: type[Outcome]
) -> None:
    fake.fail_address("alice@example.com", status)
    [outcome] = await provider.send([email_message("alice@example.com")])
    assert type(outcome) is expected
    assert str(status) in str(outcome)


async def test_wrong_key_is_provider_down(fake: FakeSendGrid, clock: FakeClock) -> None:
    provider = make_provider(fake.base_url, "SG.wrong", clock)
    try:
        [outcome] = await provider.send([email_message()])
    finally:
        await provider.close()
    assert isinstance(outcome, ProviderDown)
    assert "authorization grant is invalid" in outcome.reason


async def test_key_without_mail_send_scope_is_provider_down(clock: FakeClock) -> None:
    async with FakeSendGrid(clock=clock, forbidden_keys=frozenset({"SG.read-only"})) as fake:
        provider = make_provider(fake.base_url, "SG.read-only", clock)
        [outcome] = await provider.send([email_message()])
        await provider.close()
    assert isinstance(outcome, ProviderDown)


async def test_rate_limit_retries_at_reset(clock: FakeClock) -> None:
    async with FakeSendGrid(clock=clock, rate_limit=2, rate_window_s=60) as fake:
        provider = make_provider(fake.base_url, fake.api_key, clock)
        first = await provider.send([email_message(), email_message()])
        clock.advance(15)
        [limited] = await provider.send([email_message()])
        clock.advance(46)
        [after_reset] = await provider.send([email_message()])
        await provider.close()

    assert [type(o) for o in first] == [Accepted, Accepted]
    assert isinstance(limited, Retry)
    assert limited.after == pytest.approx(45, abs=1)
    assert isinstance(after_reset, Accepted)


async def test_oversized_message_is_rejected(clock: FakeClock) -> None:
    async with FakeSendGrid(clock=clock, max_message_bytes=2_000) as fake:
        provider = make_provider(fake.base_url, fake.api_key, clock)
        [outcome] = await provider.send([email_message(text="x" * 5_000)])
        await provider.close()
    assert isinstance(outcome, Rejected)
    assert "413" in outcome.reason


async def test_injected_failures_are_retries(clock: FakeClock) -> None:
    async with FakeSendGrid(clock=clock, fail_fraction=1.0) as unavailable:
        provider = make_provider(unavailable.base_url, unavailable.api_key, clock)
        [outcome_503] = await provider.send([email_message()])
        await provider.close()
    async with FakeSendGrid(clock=clock, throttle_fraction=1.0) as throttled:
        provider = make_provider(throttled.base_url, throttled.api_key, clock)
        [outcome_429] = await provider.send([email_message()])
        await provider.close()
    assert isinstance(outcome_503, Retry)
    assert "503" in outcome_503.reason
    assert isinstance(outcome_429, Retry)
    assert "429" in outcome_429.reason


async def test_connection_refused_is_provider_down(clock: FakeClock) -> None:
    provider = make_provider(f"http://127.0.0.1:{free_tcp_port()}", "SG.key", clock)
    [outcome] = await provider.send([email_message()])
    await provider.close()
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


async def test_fake_refuses_a_malformed_body(fake: FakeSendGrid) -> None:
    """The fake checks what SendGrid checks (so the provider's body is really validated)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {fake.api_key}"}
    body = {
        "personalizations": [{"to": [{"email": "nope"}]}],
        "from": {"email": "a@b.example"},
        "content": [{"type": "text/html", "value": "x"}, {"type": "text/plain", "value": "y"}],
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/v3/mail/send", json=body, headers=headers) as response,
    ):
        answer = await response.json()
        assert response.status == 400
        assert "X-RateLimit-Remaining" in response.headers
    fields = {error["field"] for error in answer["errors"]}
    assert fields == {"personalizations.0.to.0.email", "subject", "content"}


async def test_unreadable_ca_file_is_provider_down(clock: FakeClock, tmp_path: Path) -> None:
    settings = Settings(sendgrid_api_key="SG.key", ca_file=tmp_path / "missing.pem")
    provider = SendGridProvider.from_settings(settings, clock)
    assert provider is not None
    outcomes = await provider.send([email_message(), email_message()])
    assert [type(o) for o in outcomes] == [ProviderDown, ProviderDown]
