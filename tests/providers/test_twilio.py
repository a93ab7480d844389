"""TwilioProvider against FakeTwilio: the form Twilio expects, the error-code table, and a
full loop through signed status callbacks into the webhook parser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.fakes.twilio import FakeTwilio
from herald.providers.events import WebhookEvent
from herald.providers.twilio.client import TwilioProvider
from herald.providers.twilio.webhook import parse_twilio
from tests.providers.conftest import free_tcp_port, sms_message

SENDER = "+15005550006"


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(clock=clock) as server:
        yield server


def make_provider(
    fake: FakeTwilio,
    clock: FakeClock,
    *,
    auth_token: str | None = None,
    sender: str = SENDER,
    public_url: str = "https://herald.example",
    base_url: str | None = None,
) -> TwilioProvider:
    settings = Settings(
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=auth_token or fake.auth_token,
        twilio_from=sender,
        twilio_base_url=base_url or fake.base_url,
        public_url=public_url,
    )
    provider = TwilioProvider.from_settings(settings, clock)
    assert provider is not None
    return provider


@pytest.fixture
async def provider(fake: FakeTwilio, clock: FakeClock) -> AsyncIterator[TwilioProvider]:
    provider = make_provider(fake, clock)
    yield provider
    await provider.close()


def test_unconfigured_is_none() -> None:
    assert TwilioProvider.from_settings(Settings(twilio_account_sid="AC1")) is None


async def test_success_posts_the_documented_form(
    fake: FakeTwilio, provider: TwilioProvider, clock: FakeClock
) -> None:
    message = sms_message("+14155552671", "Grüße 😀 " * 10, ttl=600, clock=clock)
    [outcome] = await provider.send([message])

    [sms] = fake.received
    assert outcome == Accepted(provider_message_id=sms.sid)
    assert sms.sid.startswith("SM")
    assert sms.form["To"] == "+14155552671"
    assert sms.form["From"] == SENDER
    assert sms.form["Body"] == message.payload["body"]
    assert sms.form["StatusCallback"] == "https://herald.example/v1/webhooks/twilio"
    assert sms.form["ValidityPeriod"] == "600"
    assert sms.segments == 2  # 100 UTF-16 units of UCS-2


async def test_validity_period(
    fake: FakeTwilio, provider: TwilioProvider, clock: FakeClock
) -> None:
    outcomes = await provider.send(
        [
            sms_message(ttl=7 * 86_400, clock=clock),  # capped at Twilio's maximum
            sms_message(),  # no TTL: Twilio's default
            sms_message(ttl=-5, clock=clock),  # already expired: not sent at all
        ]
    )
    assert [type(o) for o in outcomes] == [Accepted, Accepted, Rejected]
    assert [sms.validity_period for sms in fake.received] == [36_000, None]


async def test_messaging_service_sender(fake: FakeTwilio, clock: FakeClock) -> None:
    provider = make_provider(fake, clock, sender="MG" + "0" * 32)
    [outcome] = await provider.send([sms_message()])
    await provider.close()
    assert isinstance(outcome, Accepted)
    assert fake.received[0].form["MessagingServiceSid"] == "MG" + "0" * 32
    assert "From" not in fake.received[0].form


@pytest.mark.parametrize(
    ("code", "expected", "opt_out"),
    [
        (21211, InvalidTarget, False),
        (21614, InvalidTarget, False),
        (30005, InvalidTarget, False),
        (30006, InvalidTarget, False),
        (21610, InvalidTarget, True),
        (20003, ProviderDown, False),
        (21606, ProviderDown, False),
        (21659, ProviderDown, False),
        (21608, ProviderDown, False),
        (21408, ProviderDown, False),
        (20429, Retry, False),
        (30003, Retry, False),
        (30008, Retry, False),
        (30004, Rejected, False),
        (30007, Rejected, False),
        (21617, Rejected, False),  # not in the table: a 400 about this message
    ],
)
async def test_error_code_table(
    fake: FakeTwilio,
    provider: TwilioProvider,
    code: int,
    expected: type[Outcome],
    opt_out: bool,
) -> None:
    fake.fail_number("+14155552671", code)
    [outcome] = await provider.send([sms_message("+14155552671")])
    assert type(outcome) is expected
    assert str(code) in str(outcome)
    if isinstance(outcome, InvalidTarget):
        assert outcome.opt_out is opt_out


async def test_real_protocol_failures(fake: FakeTwilio, provider: TwilioProvider) -> None:
    """Answers the fake produces from the request itself, not from a script."""
    outcomes = await provider.send(
        [
            sms_message("+15005550004"),  # Twilio's magic "recipient sent STOP" number
            sms_message("0044 7911"),  # not E.164
            sms_message(body="x" * 1601),  # over the 1600-character limit
            sms_message(body=""),
        ]
    )
    assert isinstance(outcomes[0], InvalidTarget)
    assert outcomes[0].opt_out
    assert isinstance(outcomes[1], InvalidTarget)
    assert "21211" in outcomes[1].reason
    assert isinstance(outcomes[2], Rejected)
    assert "21617" in outcomes[2].reason
    assert isinstance(outcomes[3], Rejected)
    assert "21602" in outcomes[3].reason


async def test_wrong_auth_token_is_provider_down(fake: FakeTwilio, clock: FakeClock) -> None:
    provider = make_provider(fake, clock, auth_token="wrong")
    [outcome] = await provider.send([sms_message()])
    await provider.close()
    assert isinstance(outcome, ProviderDown)
    assert "20003" in outcome.reason


async def test_throttling_and_outages_are_retries(clock: FakeClock) -> None:
    async with FakeTwilio(clock=clock, throttle_fraction=1.0) as throttled:
        provider = make_provider(throttled, clock)
        [throttled_outcome] = await provider.send([sms_message()])
        await provider.close()
    async with FakeTwilio(clock=clock, fail_fraction=1.0) as down:
        provider = make_provider(down, clock)
        [down_outcome] = await provider.send([sms_message()])
        await provider.close()
    assert isinstance(throttled_outcome, Retry)
    assert throttled_outcome.after == 1
    assert isinstance(down_outcome, Retry)
    assert "503" in down_outcome.reason


async def test_connection_refused_is_provider_down(fake: FakeTwilio, clock: FakeClock) -> None:
    provider = make_provider(fake, clock, base_url=f"http://127.0.0.1:{free_tcp_port()}")
    [outcome] = await provider.send([sms_message()])
    await provider.close()
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


class CallbackReceiver:
    """A stand-in for Herald's webhook endpoint: verifies and parses what arrives."""

    def __init__(self, auth_token: str) -> None:
        self.auth_token = auth_token
        self.events: list[WebhookEvent] = []
        self.arrived = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        self.events += parse_twilio(
            url=self.url,
            headers=dict(request.headers),
            body=await request.read(),
            auth_token=self.auth_token,
        )
        return web.Response(status=204)


async def test_status_callbacks_close_the_loop(clock: FakeClock) -> None:
    async with FakeTwilio(clock=clock, auto_callbacks=True) as fake:
        receiver = CallbackReceiver(fake.auth_token)
        app = web.Application()
        app.router.add_post("/v1/webhooks/twilio", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        public_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        receiver.url = public_url + "/v1/webhooks/twilio"
        fake.fail_delivery("+447911123456", 30005)
        provider = make_provider(fake, clock, public_url=public_url)
        try:
            outcomes = await provider.send(
                [sms_message("+14155552671"), sms_message("+447911123456")]
            )
            for _ in range(200):  # 2 messages x (sent + final)
                if receiver.arrived >= 4:
                    break
                await asyncio.sleep(0.01)
        finally:
            await provider.close()
            await runner.cleanup()

    sids = [o.provider_message_id for o in outcomes if isinstance(o, Accepted)]
    by_sid = {event.provider_message_id: event for event in receiver.events}
    assert by_sid[sids[0]].kind == "delivered"
    assert by_sid[sids[1]].kind == "bounced"
    assert by_sid[sids[1]].permanent
    assert by_sid[sids[1]].address == "+447911123456"
    assert len(receiver.events) == 2  # "sent" callbacks carry nothing new
