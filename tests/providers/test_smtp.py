"""SmtpProvider against a real SMTP server (aiosmtpd): MIME shape, the reply-code table,
connection reuse, STARTTLS + AUTH and implicit TLS."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.fakes.tls import LocalTls
from herald.providers.smtp.client import SmtpProvider
from tests.providers.conftest import email_message, free_tcp_port

USERNAME, PASSWORD = "herald", "s3cret"


@dataclass
class RecordingHandler:
    """Accepts mail, except that a recipient named `rcpt<code>@...` is refused at RCPT
    and `data<code>@...` at DATA with that reply code."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        local = address.split("@")[0]
        if local.startswith("rcpt"):
            return _reply(int(local[4:]))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        local = envelope.rcpt_tos[0].split("@")[0]
        if local.startswith("data"):
            return _reply(int(local[4:]))
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope, parsed))
        self.sessions.add(id(session))
        return "250 Message accepted for delivery"


def _reply(code: int) -> str:
    texts = {4: "4.2.0 Try again later", 5: "5.1.1 Mailbox unavailable"}
    return f"{code} {texts[code // 100]}"


def _authenticate(
    server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd itself answers 535 on failure.
    return AuthResult(success=ok, handled=False)


def _start(handler: RecordingHandler, **smtp_options: Any) -> tuple[Controller, int]:
    port = free_tcp_port()  # aiosmtpd 1.4.6 cannot bind port 0
    controller = Controller(handler, hostname="127.0.0.1", port=port, **smtp_options)
    controller.start()
    return controller, port


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def plain_server(handler: RecordingHandler) -> Iterator[int]:
    controller, port = _start(handler)
    yield port
    controller.stop()


def plain_provider(port: int, clock: FakeClock) -> SmtpProvider:
    settings = Settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        email_from="Herald Alerts <alerts@herald.example>",
    )
    provider = SmtpProvider.from_settings(settings, clock)
    assert provider is not None
    return provider


def test_unconfigured_is_none() -> None:
    assert SmtpProvider.from_settings(Settings(smtp_host=None)) is None


async def test_sends_multipart_with_headers(
    plain_server: int, handler: RecordingHandler, clock: FakeClock
) -> None:
    message = email_message(
        "bob@example.com",
        subject="Grüße — your receipt €",
        text="Hallo Bob, 10 € paid.",
        html="<p>Hallo Bob, <b>10 €</b> paid.</p>",
        unsubscribe_url="https://herald.example/u/abc",
    )
    [outcome] = await plain_provider(plain_server, clock).send([message])

    assert outcome == Accepted(provider_message_id=f"<{message.delivery_id}@herald>")
    [(envelope, mail)] = handler.messages
    assert envelope.mail_from == "alerts@herald.example"
    assert envelope.rcpt_tos == ["bob@example.com"]
    assert mail["Subject"] == "Grüße — your receipt €"
    assert mail["From"] == "Herald Alerts <alerts@herald.example>"
    assert mail["Message-ID"] == f"<{message.delivery_id}@herald>"
    assert mail["List-Unsubscribe"] == "<https://herald.example/u/abc>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.get_content_type() == "multipart/alternative"
    text_part = mail.get_body(preferencelist=("plain",))
    html_part = mail.get_body(preferencelist=("html",))
    assert text_part is not None
    assert html_part is not None
    assert text_part.get_content().strip() == "Hallo Bob, 10 € paid."
    assert "<b>10 €</b>" in html_part.get_content()


async def test_text_only_payload_gets_the_layout_as_its_html_part(
    plain_server: int, handler: RecordingHandler, clock: FakeClock
) -> None:
    message = email_message(subject="Your <receipt>", text="Paid & done.\n\nThanks")
    [outcome] = await plain_provider(plain_server, clock).send([message])

    assert isinstance(outcome, Accepted)
    [(_, mail)] = handler.messages
    assert mail.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in mail.iter_parts())
    assert text.replace("\r\n", "\n").strip() == "Paid & done.\n\nThanks"
    assert "<h1>Your &lt;receipt&gt;</h1>" in html
    assert '<p style="margin:0 0 16px">Paid &amp; done.</p>' in html
    assert "List-Unsubscribe" not in mail
    assert "Unsubscribe</a>" not in html  # no link to show


async def test_batch_reuses_one_connection_past_failures(
    plain_server: int, handler: RecordingHandler, clock: FakeClock
) -> None:
    batch = [
        email_message("one@example.com"),
        email_message("rcpt550@example.com"),
        email_message("data451@example.com"),
        email_message("two@example.com"),
    ]
    outcomes = await plain_provider(plain_server, clock).send(batch)

    assert [type(o) for o in outcomes] == [Accepted, InvalidTarget, Retry, Accepted]
    assert [env.rcpt_tos for env, _ in handler.messages] == [
        ["one@example.com"],
        ["two@example.com"],
    ]
    assert len(handler.sessions) == 1


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        ("rcpt550@example.com", InvalidTarget),
        ("rcpt551@example.com", InvalidTarget),
        ("rcpt553@example.com", InvalidTarget),
        ("rcpt552@example.com", Rejected),
        ("rcpt554@example.com", Rejected),
        ("rcpt450@example.com", Retry),
        ("rcpt451@example.com", Retry),
        ("rcpt452@example.com", Retry),
        ("data554@example.com", Rejected),
        ("data552@example.com", Rejected),
        ("data550@example.com", Rejected),  # 550 at DATA is about the message, not the address
        ("data451@example.com", Retry),
        ("data421@example.com", Retry),
    ],
)
async def test_reply_code_table(
    plain_server: int, clock: FakeClock, recipient: str, expected: type[Outcome]
) -> None:
    [outcome] = await plain_provider(plain_server, clock).send([email_message(recipient)])
    assert type(outcome) is expected


async def test_malformed_address_and_header_injection(plain_server: int, clock: FakeClock) -> None:
    outcomes = await plain_provider(plain_server, clock).send(
        [email_message("not an address"), email_message(subject="hi\r\nBcc: x@evil.example")]
    )
    assert isinstance(outcomes[0], InvalidTarget)
    assert isinstance(outcomes[1], Rejected)


async def test_unreachable_server_is_provider_down_for_every_message(clock: FakeClock) -> None:
    provider = plain_provider(free_tcp_port(), clock)
    outcomes = await provider.send([email_message(), email_message()])
    assert [type(o) for o in outcomes] == [ProviderDown, ProviderDown]
    assert all("smtp unreachable" in o.reason for o in outcomes)  # type: ignore[union-attr]


@pytest.fixture
def starttls_server(handler: RecordingHandler, local_tls: LocalTls) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(local_tls.cert_file, local_tls.key_file)
    controller, port = _start(
        handler,
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticate,
        auth_required=True,
    )
    yield port
    controller.stop()


def tls_settings(port: int, tls: LocalTls, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_username": USERNAME,
        "smtp_password": PASSWORD,
        "smtp_starttls": True,
        "ca_file": tls.ca_file,
        "email_from": "alerts@herald.example",
    }
    return Settings(**{**values, **overrides})


async def test_starttls_and_auth(
    starttls_server: int, handler: RecordingHandler, local_tls: LocalTls, clock: FakeClock
) -> None:
    provider = SmtpProvider.from_settings(tls_settings(starttls_server, local_tls), clock)
    assert provider is not None
    [outcome] = await provider.send([email_message()])

    assert isinstance(outcome, Accepted)
    assert len(handler.messages) == 1


async def test_wrong_password_is_provider_down(
    starttls_server: int, local_tls: LocalTls, clock: FakeClock
) -> None:
    settings = tls_settings(starttls_server, local_tls, smtp_password="wrong")
    provider = SmtpProvider.from_settings(settings, clock)
    assert provider is not None
    outcomes = await provider.send([email_message(), email_message()])
    assert [type(o) for o in outcomes] == [ProviderDown, ProviderDown]


async def test_untrusted_certificate_is_provider_down(
    starttls_server: int, local_tls: LocalTls, clock: FakeClock
) -> None:
    provider = SmtpProvider.from_settings(
        tls_settings(starttls_server, local_tls, ca_file=None), clock
    )
    assert provider is not None
    [outcome] = await provider.send([email_message()])
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


async def test_implicit_tls(
    handler: RecordingHandler, local_tls: LocalTls, clock: FakeClock
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(local_tls.cert_file, local_tls.key_file)
    controller, port = _start(handler, ssl_context=context)
    try:
        settings = tls_settings(
            port, local_tls, smtp_tls=True, smtp_username=None, smtp_password=None
        )
        provider = SmtpProvider.from_settings(settings, clock)
        assert provider is not None
        [outcome] = await provider.send([email_message()])
    finally:
        controller.stop()
    assert isinstance(outcome, Accepted)
    assert len(handler.messages) == 1
