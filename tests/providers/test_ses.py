"""SesProvider against moto's real SES v2 server, and its error table against a stub that
answers with SES's error headers (so botocore's own error parsing is exercised)."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import boto3  # type: ignore[import-untyped]
import orjson
import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.providers.ses.client import SesProvider
from tests.providers.conftest import email_message, free_tcp_port

REGION = "us-east-1"
SENDER = "alerts@herald.example"
MOTO_ACCOUNT_ID = "123456789012"  # moto's default account for any test credentials


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_tcp_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def verify_identity(moto_url: str, identity: str) -> None:
    client = boto3.client(
        "sesv2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_email_identity(EmailIdentity=identity)


@pytest.fixture
async def provider(moto_url: str, clock: FakeClock) -> AsyncIterator[SesProvider]:
    async with _provider(moto_url, clock) as ses:
        yield ses


class _provider:
    def __init__(self, endpoint_url: str, clock: FakeClock, sender: str = SENDER) -> None:
        settings = Settings(
            email_providers=["ses"],
            ses_endpoint_url=endpoint_url,
            ses_region=REGION,
            email_from=f"Herald <{sender}>",
        )
        provider = SesProvider.from_settings(settings, clock)
        assert provider is not None
        self.provider = provider

    async def __aenter__(self) -> SesProvider:
        await self.provider.start()
        return self.provider

    async def __aexit__(self, *exc_info: object) -> None:
        await self.provider.close()


def sent_raw_messages() -> list[Any]:
    return list(ses_backends[MOTO_ACCOUNT_ID][REGION].sent_messages)


def test_configured_only_when_named() -> None:
    assert SesProvider.from_settings(Settings(email_providers=["smtp"])) is None
    assert SesProvider.from_settings(Settings(email_providers=["sendgrid", "ses"])) is not None


async def test_sends_raw_mime_through_moto(moto_url: str, provider: SesProvider) -> None:
    verify_identity(moto_url, SENDER)
    message = email_message(
        "bob@example.com",
        subject="Ihre Rechnung €",
        html="<p>Hallo</p>",
        unsubscribe_url="https://herald.example/u/1",
    )
    before = len(sent_raw_messages())

    [outcome] = await provider.send([message])

    assert isinstance(outcome, Accepted)
    [stored] = sent_raw_messages()[before:]
    assert outcome.provider_message_id == stored.id
    assert stored.source == SENDER
    assert "bob@example.com" in stored.destinations
    mail = email.message_from_string(stored.raw_data, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"] == "Ihre Rechnung €"
    assert mail["Message-ID"] == f"<{message.delivery_id}@herald>"
    assert mail["List-Unsubscribe"] == "<https://herald.example/u/1>"
    assert mail.get_content_type() == "multipart/alternative"


async def test_unverified_sender_is_rejected(moto_url: str, clock: FakeClock) -> None:
    async with _provider(moto_url, clock, sender="nobody@unverified.example") as ses:
        [outcome] = await ses.send([email_message()])
    assert isinstance(outcome, Rejected)
    assert "MessageRejected" in outcome.reason


async def test_batch_keeps_order(moto_url: str, provider: SesProvider) -> None:
    verify_identity(moto_url, SENDER)
    batch = [email_message(f"user{i}@example.com") for i in range(5)]
    batch.insert(2, email_message("not an address"))

    outcomes = await provider.send(batch)

    assert [type(o) for o in outcomes] == [Accepted] * 2 + [InvalidTarget] + [Accepted] * 3
    ids = {o.provider_message_id for o in outcomes if isinstance(o, Accepted)}
    assert len(ids) == 5


async def test_unreachable_endpoint_is_provider_down(clock: FakeClock) -> None:
    async with _provider(f"http://127.0.0.1:{free_tcp_port()}", clock) as ses:
        [outcome] = await ses.send([email_message()])
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


class SesStub:
    """Answers SendEmail with one scripted SES error (x-amzn-ErrorType + JSON body)."""

    def __init__(self) -> None:
        self.status = 200
        self.code: str | None = None
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(orjson.loads(await request.read()))
        if self.code is None:
            return web.json_response({"MessageId": "stub-message-id"})
        return web.json_response(
            {"message": f"scripted {self.code}"},
            status=self.status,
            headers={"x-amzn-ErrorType": f"{self.code}:http://internal.amazon.com/coral/"},
        )


@pytest.fixture
async def stub() -> AsyncIterator[tuple[SesStub, str]]:
    ses_stub = SesStub()
    app = web.Application()
    app.router.add_post("/v2/email/outbound-emails", ses_stub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield ses_stub, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_request_shape(stub: tuple[SesStub, str], clock: FakeClock) -> None:
    ses_stub, url = stub
    message = email_message("bob@example.com")
    async with _provider(url, clock) as ses:
        [outcome] = await ses.send([message])

    assert outcome == Accepted(provider_message_id="stub-message-id")
    [request] = ses_stub.requests
    assert request["FromEmailAddress"] == SENDER
    assert request["Destination"] == {"ToAddresses": ["bob@example.com"]}
    raw = base64.b64decode(request["Content"]["Raw"]["Data"])
    assert f"Message-ID: <{message.delivery_id}@herald>".encode() in raw
    assert request["EmailTags"] == [{"Name": "herald_delivery_id", "Value": message.delivery_id}]


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "MessageRejected", Rejected),
        (400, "MailFromDomainNotVerifiedException", ProviderDown),
        (404, "NotFoundException", ProviderDown),
        (400, "SendingPausedException", ProviderDown),
        (400, "AccountSuspendedException", ProviderDown),
        (429, "TooManyRequestsException", Retry),
        (400, "LimitExceededException", Retry),
        (400, "BadRequestException", Rejected),
        (403, "UnrecognizedClientException", ProviderDown),
        (403, "InvalidSignatureException", ProviderDown),
        (500, "InternalFailure", Retry),
        (503, "ServiceUnavailable", Retry),
    ],
)
async def test_error_table(
    stub: tuple[SesStub, str], clock: FakeClock, status: int, code: str, expected: type[Outcome]
) -> None:
    ses_stub, url = stub
    ses_stub.status, ses_stub.code = status, code
    async with _provider(url, clock) as ses:
        [outcome] = await ses.send([email_message()])
    assert type(outcome) is expected
    assert code in str(outcome)
    assert len(ses_stub.requests) == 1  # botocore's own retries are off
