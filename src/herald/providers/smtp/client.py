"""Email over SMTP (aiosmtplib): STARTTLS or implicit TLS, AUTH, one connection per batch.

Reply codes (docs/providers.md): 2xx accepted, 4xx retry, 5xx rejected, and 550/551/553 on a
recipient invalid_target. A failed AUTH, or 530 "authentication required", is a
configuration problem: provider_down.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Self

import aiosmtplib

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import (
    Accepted,
    InvalidTarget,
    Outcome,
    ProviderDown,
    Rejected,
    Retry,
)
from herald.providers.base import OutboundMessage, Provider
from herald.providers.email_layout import EmailBranding
from herald.providers.email_message import (
    DEFAULT_BRANDING,
    InvalidEmail,
    build_email,
    envelope_address,
    is_plausible_address,
    message_id_for,
)

# RFC 5321 convention for "no such mailbox" / "user not local" / "mailbox name not
# allowed". (unconfirmed per server: some relays answer 550 for policy refusals too)
RECIPIENT_INVALID_CODES = frozenset({550, 551, 553})
AUTH_REQUIRED_CODE = 530


class SmtpProvider(Provider):
    name = "smtp"
    channel = Channel.EMAIL
    batch_size = 50  # sent one after the other on a single connection
    # Relay-dependent; no published figure applies to SMTP in general (unconfirmed).
    default_rate_per_s = 20.0

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        implicit_tls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        branding: EmailBranding = DEFAULT_BRANDING,
    ) -> None:
        self._branding = branding
        self._host = host
        self._port = port
        self._sender = sender
        self._envelope_sender = envelope_address(sender)
        self._username = username
        self._password = password
        self._starttls = starttls and not implicit_tls
        self._implicit_tls = implicit_tls
        self._tls_context = tls_context
        self._timeout = timeout
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        if not settings.smtp_host:
            return None
        tls_context = None
        if settings.ca_file is not None:
            # In addition to the system roots (create_default_context(cafile=) replaces them).
            tls_context = ssl.create_default_context()
            tls_context.load_verify_locations(cafile=str(settings.ca_file))
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.email_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            implicit_tls=settings.smtp_tls,
            tls_context=tls_context,
            clock=clock,
            branding=EmailBranding.from_settings(settings),
        )

    def describe(self) -> str:
        security = "tls" if self._implicit_tls else "starttls" if self._starttls else "plain"
        return f"smtp {self._host}:{self._port} ({security})"

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        await self.send_each(messages, lambda _, outcome: outcomes.append(outcome))
        return outcomes

    async def send_each(
        self, messages: Sequence[OutboundMessage], report: Callable[[int, Outcome], None]
    ) -> None:
        client: aiosmtplib.SMTP | None = None
        try:
            for index, message in enumerate(messages):
                if client is None or not client.is_connected:
                    client, failure = await self._connect()
                if client is None:
                    # Could not (re)connect: the rest of the batch shares the failure.
                    assert failure is not None
                    for rest in range(index, len(messages)):
                        report(rest, failure)
                    break
                report(index, await self._send_one(client, message))
        finally:
            if client is not None:
                await _quit_quietly(client)

    async def _connect(self) -> tuple[aiosmtplib.SMTP | None, Outcome | None]:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._implicit_tls,
            start_tls=self._starttls,
            tls_context=self._tls_context,
            username=self._username,
            password=self._password,
            timeout=self._timeout,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _quit_quietly(client)
            return None, ProviderDown(f"smtp auth failed: {exc.code} {exc.message}")
        except aiosmtplib.SMTPResponseException as exc:
            await _quit_quietly(client)
            return None, _classify_session_error(exc)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Refused, reset, DNS, TLS, timeout: the relay is down for now (failover).
            await _quit_quietly(client)
            return None, ProviderDown(f"smtp unreachable: {type(exc).__name__}: {exc}")
        return client, None

    async def _send_one(self, client: aiosmtplib.SMTP, message: OutboundMessage) -> Outcome:
        if not is_plausible_address(message.target):
            return InvalidTarget(f"malformed email address {message.target!r}")
        try:
            mail = build_email(
                message, sender=self._sender, now=self._clock.now(), branding=self._branding
            )
            await client.send_message(
                mail, sender=self._envelope_sender, recipients=[message.target]
            )
        except InvalidEmail as exc:
            return Rejected(f"cannot build message: {exc}")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _classify_recipient_refusal(exc.recipients[0])
        except aiosmtplib.SMTPResponseException as exc:
            return _classify_session_error(exc)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # The connection broke mid-message: the relay is down for now (failover); the
            # next message of the batch reconnects.
            return ProviderDown(f"smtp unreachable: {type(exc).__name__}: {exc}")
        except (aiosmtplib.SMTPException, ValueError) as exc:
            return Retry(f"smtp send failed: {exc}")
        return Accepted(provider_message_id=message_id_for(message.delivery_id))


def _classify_recipient_refusal(refusal: aiosmtplib.SMTPRecipientRefused) -> Outcome:
    reason = f"recipient refused: {refusal.code} {refusal.message}"
    if refusal.code in RECIPIENT_INVALID_CODES:
        return InvalidTarget(reason)
    return _by_code_class(refusal.code, reason)


def _classify_session_error(exc: aiosmtplib.SMTPResponseException) -> Outcome:
    reason = f"smtp {exc.code} {exc.message}"
    if exc.code == AUTH_REQUIRED_CODE:
        return ProviderDown(reason)
    return _by_code_class(exc.code, reason)


def _by_code_class(code: int, reason: str) -> Outcome:
    if 400 <= code < 500:
        return Retry(reason)
    if 500 <= code < 600:
        return Rejected(reason)
    return Retry(f"unexpected reply: {reason}")


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
