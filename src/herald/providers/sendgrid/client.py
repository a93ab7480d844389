"""Email through SendGrid v3 (POST /v3/mail/send, Bearer key), one request per message.

202 + X-Message-Id is accepted; 400/413 rejected; 401/403 provider_down; 429 retry at
X-RateLimit-Reset; 5xx retry (docs/providers.md). The delivery id travels in custom_args so
event webhooks name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any, Self

import aiohttp
import orjson

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
from herald.providers.base import OutboundMessage
from herald.providers.email_layout import EmailBranding, compose_html
from herald.providers.email_message import (
    DEFAULT_BRANDING,
    is_plausible_address,
    message_id_for,
)
from herald.providers.http_session import (
    NETWORK_ERRORS,
    HttpProvider,
    new_session,
    retry_after_seconds,
    unreachable,
)

DELIVERY_ARG = "herald_delivery_id"
SEND_PATH = "/v3/mail/send"


class SendGridProvider(HttpProvider):
    name = "sendgrid"
    channel = Channel.EMAIL
    batch_size = 100
    # SendGrid publishes no mail/send limit; answers carry X-RateLimit-* instead. A figure
    # of 10,000 requests/s is quoted by users (unconfirmed): stay far below it.
    default_rate_per_s = 100.0

    def __init__(
        self,
        *,
        api_key: str,
        sender: str,
        base_url: str = "https://api.sendgrid.com",
        concurrency: int = 20,
        ca_file: str | None = None,
        timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        branding: EmailBranding = DEFAULT_BRANDING,
    ) -> None:
        self._branding = branding
        self._api_key = api_key
        self._sender = sender
        self._url = base_url.rstrip("/") + SEND_PATH
        self._concurrency = concurrency
        self._ca_file = ca_file
        self._timeout = timeout
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        if not settings.sendgrid_api_key:
            return None
        return cls(
            api_key=settings.sendgrid_api_key,
            sender=settings.email_from,
            base_url=settings.sendgrid_base_url,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
            clock=clock,
            branding=EmailBranding.from_settings(settings),
        )

    def describe(self) -> str:
        return f"sendgrid {self._url}"

    def _new_session(self) -> aiohttp.ClientSession:
        return new_session(
            connections=self._concurrency, timeout_s=self._timeout, ca_file=self._ca_file
        )

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        if not is_plausible_address(message.target):
            return InvalidTarget(f"malformed email address {message.target!r}")
        body = orjson.dumps(mail_send_body(message, self._sender, self._branding))
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
        }
        try:
            async with session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.read()
                return classify(response.status, response.headers, answer, self._clock.time())
        except NETWORK_ERRORS as exc:
            return unreachable("sendgrid", exc)


def mail_send_body(
    message: OutboundMessage, sender: str, branding: EmailBranding = DEFAULT_BRANDING
) -> dict[str, Any]:
    payload = message.payload
    # SendGrid requires text/plain first, then text/html.
    content = [
        {"type": "text/plain", "value": str(payload.get("text", ""))},
        {"type": "text/html", "value": compose_html(payload, branding)},
    ]
    headers = {"Message-ID": message_id_for(message.delivery_id)}
    if payload.get("unsubscribe_url"):
        headers["List-Unsubscribe"] = f"<{payload['unsubscribe_url']}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return {
        "personalizations": [{"to": [{"email": message.target}]}],
        "from": _address_object(sender),
        "subject": str(payload.get("subject", "")),
        "content": content,
        "custom_args": {DELIVERY_ARG: message.delivery_id},
        "headers": headers,
    }


def _address_object(header_value: str) -> dict[str, str]:
    name, address = parseaddr(header_value)
    return {"email": address, "name": name} if name else {"email": address}


def classify(status: int, headers: Mapping[str, str], body: bytes, now: float) -> Outcome:
    if status == 202:
        return Accepted(provider_message_id=headers.get("X-Message-Id"))
    reason = f"sendgrid {status}: {_error_messages(body)}"
    if status == 429:
        return Retry(reason, after=_seconds_until_reset(headers, now))
    if status in (401, 403):
        return ProviderDown(reason)
    if status >= 500:
        return Retry(reason, after=retry_after_seconds(headers))
    # 400, 413 and any other 4xx: this message is wrong.
    return Rejected(reason)


def _error_messages(body: bytes) -> str:
    try:
        errors = orjson.loads(body).get("errors", [])
        return "; ".join(
            f"{error.get('field') or '-'}: {error.get('message', '')}" for error in errors
        )
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _seconds_until_reset(headers: Mapping[str, str], now: float) -> float | None:
    reset = headers.get("X-RateLimit-Reset")
    if reset is None:
        return retry_after_seconds(headers)
    try:
        return max(0.0, float(reset) - now)
    except ValueError:
        return None
