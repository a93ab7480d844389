"""SMS through Twilio Programmable Messaging (POST .../Messages.json, HTTP Basic).

Error codes per docs/providers.md; 21610 (the recipient texted STOP) is an invalid target that
is also an opt-out. Delivery reports come back on the status callback
(`{public url}/v1/webhooks/twilio`, parsed by herald.providers.twilio.webhook).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Self

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
from herald.providers.http_session import (
    NETWORK_ERRORS,
    HttpProvider,
    new_session,
    retry_after_seconds,
    unreachable,
)

STATUS_CALLBACK_PATH = "/v1/webhooks/twilio"
# Twilio's documented range for ValidityPeriod is 1..36000 s (error 90007/21624; older
# pages said 14400, so a 4-hour cap would be the conservative reading).
MAX_VALIDITY_S = 36_000

OPT_OUT_CODE = 21610
INVALID_TARGET_CODES = frozenset({21211, 21614, 30005, 30006})
PROVIDER_DOWN_CODES = frozenset({20003, 21606, 21659, 21608, 21408})
RETRY_CODES = frozenset({20429, 30003, 30008})
REJECTED_CODES = frozenset({30004, 30007})


class TwilioProvider(HttpProvider):
    name = "twilio"
    channel = Channel.SMS
    batch_size = 50
    # Twilio queues what exceeds a sender's throughput (1 msg/s for a US long code, 3 for
    # toll-free, 100 for a short code, per Twilio's docs) for up to ValidityPeriod. 10/s
    # is a middle ground; set HERALD_RATE_LIMITS for the real sender (unconfirmed).
    default_rate_per_s = 10.0

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback_url: str | None,
        base_url: str = "https://api.twilio.com",
        concurrency: int = 20,
        ca_file: str | None = None,
        timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._account_sid = account_sid
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}"}
        self._sender = sender
        self._status_callback_url = status_callback_url
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._concurrency = concurrency
        self._ca_file = ca_file
        self._timeout = timeout
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        sid, token, sender = (
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_from,
        )
        if not (sid and token and sender):
            return None
        return cls(
            account_sid=sid,
            auth_token=token,
            sender=sender,
            status_callback_url=settings.effective_public_url + STATUS_CALLBACK_PATH,
            base_url=settings.twilio_base_url,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
            clock=clock,
        )

    def describe(self) -> str:
        return f"twilio account {self._account_sid[:6]}… from {self._sender}"

    def _new_session(self) -> aiohttp.ClientSession:
        return new_session(
            connections=self._concurrency, timeout_s=self._timeout, ca_file=self._ca_file
        )

    def form_for(self, message: OutboundMessage) -> dict[str, str] | Rejected:
        form = {"To": message.target, "Body": str(message.payload.get("body", ""))}
        # A Messaging Service SID (MG...) picks the sender from its pool.
        form["MessagingServiceSid" if self._sender.startswith("MG") else "From"] = self._sender
        if self._status_callback_url:
            form["StatusCallback"] = self._status_callback_url
        if message.expires_at is not None:
            ttl = message.ttl_seconds(self._clock.now())
            if ttl < 1:
                return Rejected("expired before it could be sent")
            form["ValidityPeriod"] = str(min(ttl, MAX_VALIDITY_S))
        return form

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        form = self.form_for(message)
        if isinstance(form, Rejected):
            return form
        try:
            async with session.post(
                self._url, data=form, headers=self._headers, allow_redirects=False
            ) as response:
                body = await response.read()
                return classify(response.status, response.headers, body)
        except NETWORK_ERRORS as exc:
            return unreachable("twilio", exc)


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    error = _error_body(body)
    if 200 <= status < 300:
        # Taken even if the body is odd: resending could charge and deliver twice.
        sid = error.get("sid")
        return Accepted(provider_message_id=str(sid) if sid else None)
    code = _int_or_none(error.get("code"))
    reason = f"twilio {status} {code or ''}: {error.get('message', '')}".strip()
    outcome = classify_error_code(code, reason, retry_after=retry_after_seconds(headers))
    if outcome is not None:
        return outcome
    return _classify_status(status, reason, headers)


def classify_error_code(
    code: int | None, reason: str, *, retry_after: float | None = None
) -> Outcome | None:
    """The outcome the docs/providers.md table gives a Twilio error code, None if not listed."""
    if code == OPT_OUT_CODE:
        return InvalidTarget(reason, opt_out=True)
    if code in INVALID_TARGET_CODES:
        return InvalidTarget(reason)
    if code in PROVIDER_DOWN_CODES:
        return ProviderDown(reason)
    if code in RETRY_CODES:
        return Retry(reason, after=retry_after)
    if code in REJECTED_CODES:
        return Rejected(reason)
    return None


def _classify_status(status: int, reason: str, headers: Mapping[str, str]) -> Outcome:
    if status == 429 or status >= 500:
        return Retry(reason, after=retry_after_seconds(headers))
    # 401/403: credentials; 404 on our own account's Messages URL: a wrong account SID.
    if status in (401, 403, 404):
        return ProviderDown(reason)
    return Rejected(reason)


def _error_body(body: bytes) -> dict[str, object]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"message": body[:200].decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {}


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None
