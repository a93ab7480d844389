"""No provider follows a redirect: an answer 3xx is that request's answer, and the place it
points to is never asked (it could be anywhere, plain HTTP included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.outcomes import Accepted
from herald.providers.base import Provider
from herald.providers.sendgrid.client import SendGridProvider
from herald.providers.twilio.client import TwilioProvider
from tests.providers.conftest import email_message, free_tcp_port, sms_message


@dataclass
class Redirector:
    """Answers every request with `status` and a Location on itself, and counts hits."""

    status: int
    url: str = ""
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(status=self.status, headers={"Location": f"{self.url}/elsewhere"})


@pytest.fixture(params=[302, 303, 307, 308])
async def redirector(request: pytest.FixtureRequest) -> AsyncIterator[Redirector]:
    stub = Redirector(request.param)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stub.url = f"http://127.0.0.1:{port}"
    try:
        yield stub
    finally:
        await runner.cleanup()


def sendgrid(url: str, clock: FakeClock) -> Provider | None:
    settings = Settings(sendgrid_api_key="SG.key", sendgrid_base_url=url)
    return SendGridProvider.from_settings(settings, clock)


def twilio(url: str, clock: FakeClock) -> Provider | None:
    settings = Settings(
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="token",
        twilio_from="+15005550006",
        twilio_base_url=url,
    )
    return TwilioProvider.from_settings(settings, clock)


@pytest.mark.parametrize(
    ("make", "message"),
    [(sendgrid, email_message()), (twilio, sms_message())],
    ids=["sendgrid", "twilio"],
)
async def test_http_providers_do_not_follow_redirects(
    redirector: Redirector, clock: FakeClock, make: object, message: object
) -> None:
    provider = make(redirector.url, clock)  # type: ignore[operator]
    assert provider is not None
    try:
        [outcome] = await provider.send([message])
    finally:
        await provider.close()
    assert not isinstance(outcome, Accepted)
    assert len(redirector.paths) == 1
    assert "/elsewhere" not in redirector.paths
