"""WhatsApp through Twilio's Messages API (FakeTwilio): whatsapp: addresses, free-form inside
the 24-hour window, the Content template outside it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, ProviderDown, Rejected
from herald.fakes.twilio import FakeTwilio
from herald.providers.base import OutboundMessage
from herald.providers.whatsapp import WhatsAppProvider
from tests.providers.conftest import address_message

SENDER = "+14155238886"
TEMPLATE = "HX" + "b" * 32
NUMBER = "+14155550100"


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(clock=clock, sender_numbers=frozenset({"whatsapp:" + SENDER})) as server:
        yield server


def provider_for(fake: FakeTwilio, clock: FakeClock, template: str | None) -> WhatsAppProvider:
    settings = Settings(
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=fake.auth_token,
        twilio_whatsapp_from=SENDER,
        twilio_whatsapp_content_sid=template,
        twilio_base_url=fake.base_url,
        public_url="https://herald.example",
    )
    provider = WhatsAppProvider.from_settings(settings, clock)
    assert provider is not None
    return provider


def to(number: str, data: dict[str, object] | None = None) -> OutboundMessage:
    return address_message(
        Channel.WHATSAPP, number, title=None, body="Your order shipped", data=data
    )


def test_unconfigured_is_none() -> None:
    assert WhatsAppProvider.from_settings(Settings(twilio_account_sid="AC1")) is None


async def test_inside_the_window_a_free_form_body_goes(fake: FakeTwilio, clock: FakeClock) -> None:
    fake.open_whatsapp_session(NUMBER)
    provider = provider_for(fake, clock, TEMPLATE)
    try:
        [outcome] = await provider.send([to(NUMBER)])
    finally:
        await provider.close()
    assert isinstance(outcome, Accepted)
    [sent] = fake.received
    assert (sent.to, sent.sender, sent.body) == (
        f"whatsapp:{NUMBER}",
        f"whatsapp:{SENDER}",
        "Your order shipped",
    )
    assert "ContentSid" not in sent.form


@pytest.mark.parametrize("from_data", [False, True])
async def test_outside_the_window_the_content_template_goes(
    fake: FakeTwilio, clock: FakeClock, from_data: bool
) -> None:
    data_template = "HX" + "c" * 32
    data = {"whatsapp_content_sid": data_template, "whatsapp_content_variables": {"1": "A-17"}}
    provider = provider_for(fake, clock, TEMPLATE)
    try:
        [outcome] = await provider.send([to(NUMBER, data if from_data else None)])
    finally:
        await provider.close()
    assert isinstance(outcome, Accepted)
    [sent] = fake.received  # the refused free-form message was not recorded
    assert sent.form["ContentSid"] == (data_template if from_data else TEMPLATE)
    expected = {"1": "A-17"} if from_data else {"1": "Your order shipped"}
    assert orjson.loads(sent.form["ContentVariables"]) == expected
    assert "Body" not in sent.form


async def test_outside_the_window_without_a_template_is_rejected(
    fake: FakeTwilio, clock: FakeClock
) -> None:
    provider = provider_for(fake, clock, None)
    try:
        [outcome] = await provider.send([to(NUMBER)])
        [bad] = await provider.send([to("+15005550001")])
    finally:
        await provider.close()
    assert isinstance(outcome, Rejected)
    assert "63016" in outcome.reason
    assert isinstance(bad, InvalidTarget)  # 21211 through Twilio's error table


async def test_refused_credentials_are_provider_down(fake: FakeTwilio, clock: FakeClock) -> None:
    fake.open_whatsapp_session(NUMBER)
    fake.auth_token = "rotated"
    provider = provider_for(fake, clock, TEMPLATE)
    fake.auth_token = "rotated-again"
    try:
        [outcome] = await provider.send([to(NUMBER)])
    finally:
        await provider.close()
    assert isinstance(outcome, ProviderDown)
