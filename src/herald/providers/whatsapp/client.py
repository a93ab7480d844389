"""WhatsApp through Twilio's Messages API: the same endpoint, account and error table as
SMS (herald.providers.twilio), with `whatsapp:`-prefixed To and From.

Inside the 24-hour customer service window (the user wrote to the business in the last
day) a free-form Body goes through; outside it Twilio refuses with 63016 and only an
approved Content template may start the conversation. Herald sends free-form first and,
on 63016, the template: the notification's `data.whatsapp_content_sid` (with
`data.whatsapp_content_variables`) or HERALD_TWILIO_WHATSAPP_CONTENT_SID, whose {{1}} is
the message text. Without a template the delivery is rejected with that reason.
"""

from __future__ import annotations

from typing import Any, Self

import aiohttp
import orjson

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import Outcome, Rejected
from herald.providers.base import OutboundMessage
from herald.providers.http_session import NETWORK_ERRORS, unreachable
from herald.providers.twilio.client import STATUS_CALLBACK_PATH, TwilioProvider, classify

PREFIX = "whatsapp:"
OUTSIDE_WINDOW_CODE = 63016


def whatsapp_address(number: str) -> str:
    return number if number.startswith(PREFIX) else PREFIX + number


class WhatsAppProvider(TwilioProvider):
    name = "whatsapp"
    channel = Channel.WHATSAPP
    # WhatsApp senders start at 80 messages/second on Twilio (unconfirmed for new ones).
    default_rate_per_s = 20.0

    def __init__(self, *, content_sid: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._content_sid = content_sid

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        sid, token, sender = (
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_whatsapp_from,
        )
        if not (sid and token and sender):
            return None
        return cls(
            account_sid=sid,
            auth_token=token,
            sender=whatsapp_address(sender),
            status_callback_url=settings.effective_public_url + STATUS_CALLBACK_PATH,
            base_url=settings.twilio_base_url,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
            clock=clock,
            content_sid=settings.twilio_whatsapp_content_sid,
        )

    def describe(self) -> str:
        return f"whatsapp via twilio from {self._sender}"

    def form_for(self, message: OutboundMessage) -> dict[str, str] | Rejected:
        form = super().form_for(message)
        if isinstance(form, dict):
            form["To"] = whatsapp_address(message.target)
        return form

    def template_form(
        self, message: OutboundMessage, form: dict[str, str]
    ) -> dict[str, str] | None:
        """The form that sends the Content template instead of Body, None without one."""
        data = message.payload.get("data") or {}
        content_sid = data.get("whatsapp_content_sid") or self._content_sid
        if not isinstance(content_sid, str):
            return None
        variables = data.get("whatsapp_content_variables") or {"1": message.payload.get("body")}
        templated = {k: v for k, v in form.items() if k != "Body"}
        templated["ContentSid"] = content_sid
        templated["ContentVariables"] = orjson.dumps(variables).decode()
        return templated

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        form = self.form_for(message)
        if isinstance(form, Rejected):
            return form
        try:
            status, headers, body = await self._post_form(session, form)
            if status >= 400 and _error_code(body) == OUTSIDE_WINDOW_CODE:
                templated = self.template_form(message, form)
                if templated is None:
                    return Rejected(
                        "whatsapp 63016: outside the 24-hour window and no Content template "
                        "(data.whatsapp_content_sid or HERALD_TWILIO_WHATSAPP_CONTENT_SID)"
                    )
                status, headers, body = await self._post_form(session, templated)
            return classify(status, headers, body)
        except NETWORK_ERRORS as exc:
            return unreachable("whatsapp", exc)

    async def _post_form(
        self, session: aiohttp.ClientSession, form: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        async with session.post(
            self._url, data=form, headers=self._headers, allow_redirects=False
        ) as response:
            return response.status, dict(response.headers), await response.read()


def _error_code(body: bytes) -> int | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = document.get("code") if isinstance(document, dict) else None
    return code if isinstance(code, int) else None
