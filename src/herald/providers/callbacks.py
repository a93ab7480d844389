"""Provider webhooks: `POST /v1/webhooks/{provider}` handed to that provider's parser.

Framework-free: each parser (in its provider's folder, `<provider>/webhook.py`) takes the
URL, the headers, the raw body bytes and its secrets, and either returns events
(herald.providers.events) or raises WebhookRejected (the API answers 401).

- Twilio (status callbacks and inbound STOP/START): X-Twilio-Signature, HMAC-SHA1.
- SendGrid event webhook: ECDSA P-256/SHA-256 over timestamp + body, replay window.
- SES through SNS: RSA signature (SignatureVersion 1 SHA1, 2 SHA256) with the
  certificate at SigningCertURL, fetched only from trusted URLs; replay window.

Event `kind` says what happened to the message; `permanent` says the *address* is dead
or opted out and should be suppressed (a hard bounce, a complaint, STOP), as opposed to a
failure of this one message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.providers.events import (
    UnknownWebhookProvider,
    WebhookEvent,
    WebhookNotAllowed,
    WebhookRejected,
)
from herald.providers.sendgrid.webhook import SENDGRID_MAX_AGE, parse_sendgrid
from herald.providers.ses.webhook import SNS_MAX_AGE, SnsCertificates, parse_ses
from herald.providers.twilio.webhook import parse_twilio


@dataclass(slots=True)
class WebhookConfig:
    """Secrets and trust settings for every provider webhook."""

    twilio_auth_token: str | None = None
    twilio_account_sid: str | None = None
    sendgrid_public_key: str | None = None
    sns_certificates: SnsCertificates = field(default_factory=SnsCertificates)
    # The SNS topics this deployment subscribed (HERALD_SNS_TOPIC_ARNS); none: no SNS.
    sns_topic_arns: frozenset[str] = frozenset()
    sendgrid_max_age: timedelta = SENDGRID_MAX_AGE
    sns_max_age: timedelta = SNS_MAX_AGE

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> WebhookConfig:
        return cls(
            twilio_auth_token=settings.twilio_auth_token,
            twilio_account_sid=settings.twilio_account_sid,
            sendgrid_public_key=settings.sendgrid_webhook_key,
            sns_certificates=SnsCertificates(clock=clock),
            sns_topic_arns=frozenset(settings.sns_topic_arns),
        )


async def parse_webhook(
    provider: str,
    *,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    config: WebhookConfig,
    now: datetime,
) -> list[WebhookEvent]:
    """Verify and parse `POST /v1/webhooks/{provider}`; raises WebhookRejected."""
    if provider == "twilio":
        if not config.twilio_auth_token:
            raise WebhookRejected("twilio webhooks are not configured")
        return parse_twilio(
            url=url,
            headers=headers,
            body=body,
            auth_token=config.twilio_auth_token,
            account_sid=config.twilio_account_sid,
        )
    if provider == "sendgrid":
        if not config.sendgrid_public_key:
            raise WebhookRejected("sendgrid webhooks are not configured")
        return parse_sendgrid(
            headers=headers,
            body=body,
            public_key=config.sendgrid_public_key,
            now=now,
            max_age=config.sendgrid_max_age,
        )
    if provider in ("ses", "sns"):
        if not config.sns_topic_arns:
            raise WebhookNotAllowed(
                "SNS webhooks are refused: HERALD_SNS_TOPIC_ARNS (the topic ARNs this "
                "deployment subscribed, comma-separated) is not set"
            )
        return await parse_ses(
            headers=headers,
            body=body,
            certificates=config.sns_certificates,
            now=now,
            topic_arns=config.sns_topic_arns,
            max_age=config.sns_max_age,
        )
    raise UnknownWebhookProvider(f"no webhook for provider {provider!r}")
