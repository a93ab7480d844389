"""A protocol-faithful fake of Twilio Programmable Messaging.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP Basic (AccountSid:
AuthToken) and a form body (To, From or MessagingServiceSid, Body, StatusCallback,
ValidityPeriod). It checks auth, required fields, E.164 numbers, the 1600-character body
limit and ValidityPeriod's range, and answers 201 with a message resource or Twilio's
error body {"code", "message", "more_info", "status"}.

It can be told per number to answer an error code (`fail_number`), to fail a delivery
later (`fail_delivery`), to add latency or fail a fraction with 503 (FakeServer) or 429
(`throttle_fraction`). It POSTs signed status callbacks (`send_status_callback`, or
automatically with `auto_callbacks`) and signed inbound messages (`send_inbound`), so an
end-to-end test can close the loop through Herald's webhook.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson

from herald.fakes.common import FakeServer, Fault, Request, Response, json_response
from herald.providers.twilio.webhook import twilio_signature
from herald.sms_text import count_segments, normalize_phone

API_VERSION = "2010-04-01"
MAX_BODY_CHARS = 1600
MAX_VALIDITY_S = 36_000

# Twilio's error codes as the fake answers them: code -> (HTTP status, message).
TWILIO_ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource was not found"),
    20429: (429, "Too Many Requests"),
    20503: (503, "Service Unavailable"),
    21211: (400, "Invalid 'To' Phone Number"),
    21408: (400, "Permission to send an SMS has not been enabled for the region"),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21606: (400, "The 'From' phone number provided is not a valid message-capable number"),
    21608: (400, "The number is unverified. Trial accounts may only send to verified numbers"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21612: (400, "The 'To' phone number is not currently reachable via SMS"),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21624: (400, "Invalid validity period value"),
    21659: (400, "'From' is not a Twilio phone number or Short Code country mismatch"),
    # Delivery errors: reported on status callbacks; as API answers they are scripted only.
    30003: (400, "Unreachable destination handset"),
    30004: (400, "Message blocked"),
    30005: (400, "Unknown destination handset"),
    30006: (400, "Landline or unreachable carrier"),
    30007: (400, "Message filtered"),
    30008: (400, "Unknown error"),
    # WhatsApp (the same Messages API with whatsapp: addresses).
    63007: (400, "Twilio could not find a Channel with the specified From address"),
    63016: (
        400,
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    ),
    21656: (400, "The ContentVariables Parameter is invalid"),
    21655: (400, "The ContentSid is Invalid"),
}
WHATSAPP = "whatsapp:"
CONTENT_SID = re.compile(r"^HX[0-9a-f]{32}$")

# Twilio's test-credential magic numbers (To) and the error each one provokes.
MAGIC_TO_NUMBERS: dict[str, int] = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}


def twilio_error(code: int, *, retry_after: float | None = None) -> Response:
    status, message = TWILIO_ERRORS.get(code, (400, f"Error {code}"))
    headers = (("retry-after", str(int(retry_after))),) if retry_after is not None else ()
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return json_response(status, body, headers)


@dataclass(slots=True)
class SentSms:
    sid: str
    to: str
    sender: str
    body: str
    status_callback: str | None
    validity_period: int | None
    form: dict[str, str]
    segments: int
    callbacks: list[tuple[str, int]] = field(default_factory=list)  # (status, HTTP answer)


class FakeTwilio(FakeServer):
    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        sender_numbers: frozenset[str] | None = None,
        magic_numbers: bool = True,
        throttle_fraction: float = 0.0,
        auto_callbacks: bool = False,
        **server_options: Any,
    ) -> None:
        super().__init__(**server_options)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.sender_numbers = sender_numbers  # None: any From is ours
        self.throttle_fraction = throttle_fraction
        self.auto_callbacks = auto_callbacks
        self.received: list[SentSms] = []
        self.by_sid: dict[str, SentSms] = {}
        self.delivery_failures: dict[str, int] = {}
        self.whatsapp_sessions: set[str] = set()
        if magic_numbers:
            for number, code in MAGIC_TO_NUMBERS.items():
                self.fail_number(number, code)
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def messages_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    def fail_number(
        self, number: str, code: int, *, times: int | None = None, retry_after: float | None = None
    ) -> None:
        """Answer sends to `number` with Twilio error `code`."""
        self.faults.add(number, Fault(str(code), times=times, retry_after=retry_after))

    def fail_delivery(self, number: str, code: int) -> None:
        """Accept sends to `number`, then report them undelivered with `code`."""
        self.delivery_failures[number] = code

    # -- the API --------------------------------------------------------------------

    def unavailable(self) -> Response:
        return twilio_error(20503)

    async def handle(self, request: Request) -> Response:
        if not request.path.startswith(f"/{API_VERSION}/Accounts/"):
            return twilio_error(20404)
        if not self._authorized(request):
            return twilio_error(20003)
        if request.method != "POST" or request.path != self.messages_path:
            return twilio_error(20404)
        if self.throttle_fraction and self._random.random() < self.throttle_fraction:
            return twilio_error(20429, retry_after=1)
        return self._create_message(request.form())

    def _authorized(self, request: Request) -> bool:
        credentials = request.header("authorization") or ""
        scheme, _, encoded = credentials.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        path_sid = request.path.split("/")[3] if request.path.count("/") >= 3 else ""
        return (
            secrets.compare_digest(user, self.account_sid)
            and secrets.compare_digest(password, self.auth_token)
            and path_sid == self.account_sid
        )

    def _create_message(self, form: dict[str, str]) -> Response:
        error = self._validate(form)
        if error is not None:
            return error
        fault = self.faults.take(form["To"].removeprefix(WHATSAPP))
        if fault is not None:
            return twilio_error(int(fault.kind), retry_after=fault.retry_after)
        if self._outside_whatsapp_window(form):
            return twilio_error(63016)
        sms = self._record(form)
        if self.auto_callbacks and sms.status_callback:
            self._spawn(self._report_fate(sms))
        return json_response(201, self._resource(sms))

    def open_whatsapp_session(self, number: str) -> None:
        """The user wrote to the business: free-form messages pass for 24 hours."""
        self.whatsapp_sessions.add(number.removeprefix(WHATSAPP))

    def _outside_whatsapp_window(self, form: dict[str, str]) -> bool:
        to = form["To"]
        free_form = to.startswith(WHATSAPP) and "ContentSid" not in form
        return free_form and to.removeprefix(WHATSAPP) not in self.whatsapp_sessions

    def _validate_whatsapp(self, form: dict[str, str]) -> Response | None:
        to = form.get("To", "").removeprefix(WHATSAPP)
        if not form.get("From", "").startswith(WHATSAPP):
            return twilio_error(63007)
        if not _is_e164(to):
            return twilio_error(21211)
        content_sid = form.get("ContentSid")
        if content_sid is None:
            return None if form.get("Body") else twilio_error(21602)
        if not CONTENT_SID.match(content_sid):
            return twilio_error(21655)
        try:
            variables = orjson.loads(form.get("ContentVariables") or "{}")
        except orjson.JSONDecodeError:
            return twilio_error(21656)
        return None if isinstance(variables, dict) else twilio_error(21656)

    def _validate(self, form: dict[str, str]) -> Response | None:
        if form.get("To", "").startswith(WHATSAPP):
            return self._validate_whatsapp(form)
        to, body = form.get("To", ""), form.get("Body")
        sender = form.get("From") or form.get("MessagingServiceSid")
        if not to:
            return twilio_error(21604)
        if not sender:
            return twilio_error(21603)
        if not body:
            return twilio_error(21602)
        if not _is_e164(to):
            return twilio_error(21211)
        if "From" in form and self.sender_numbers is not None and sender not in self.sender_numbers:
            return twilio_error(21606)
        if len(body) > MAX_BODY_CHARS:
            return twilio_error(21617)
        validity = form.get("ValidityPeriod")
        if validity is not None and not (
            validity.isdigit() and 1 <= int(validity) <= MAX_VALIDITY_S
        ):
            return twilio_error(21624)
        return None

    def _record(self, form: dict[str, str]) -> SentSms:
        sms = SentSms(
            sid="SM" + secrets.token_hex(16),
            to=form["To"],
            sender=form.get("From") or form.get("MessagingServiceSid", ""),
            body=form.get("Body", ""),
            status_callback=form.get("StatusCallback"),
            validity_period=int(form["ValidityPeriod"]) if "ValidityPeriod" in form else None,
            form=form,
            segments=count_segments(form.get("Body", "")),
        )
        self.received.append(sms)
        self.by_sid[sms.sid] = sms
        return sms

    def _resource(self, sms: SentSms) -> dict[str, Any]:
        now = format_datetime(datetime.fromtimestamp(self.clock.time(), UTC), usegmt=True)
        via_service = "MessagingServiceSid" in sms.form
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": sms.body,
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": None if via_service else sms.sender,
            "messaging_service_sid": sms.sender if via_service else None,
            "num_media": "0",
            "num_segments": str(sms.segments),
            "price": None,
            "price_unit": "USD",
            "sid": sms.sid,
            "status": "accepted" if via_service else "queued",
            "to": sms.to,
            "uri": f"{self.messages_path[:-5]}/{sms.sid}.json",
        }

    # -- callbacks --------------------------------------------------------------------

    def sign(self, url: str, params: dict[str, str]) -> str:
        return twilio_signature(self.auth_token, url, params.items())

    async def send_status_callback(
        self,
        sid: str,
        status: str = "delivered",
        *,
        error_code: int | None = None,
        url: str | None = None,
    ) -> int:
        """POST a signed status callback for message `sid`; returns Herald's HTTP status."""
        sms = self.by_sid[sid]
        target = url or sms.status_callback
        if target is None:
            raise ValueError(f"message {sid} has no StatusCallback")
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": sms.sender,
            "To": sms.to,
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        answer = await self._post_signed(target, params)
        sms.callbacks.append((status, answer))
        return answer

    async def send_inbound(self, url: str, *, sender: str, body: str, to: str = "") -> int:
        """POST a signed inbound message (e.g. "STOP") as Twilio's messaging webhook does."""
        sid = "SM" + secrets.token_hex(16)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "From": sender,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(count_segments(body)),
        }
        return await self._post_signed(url, params)

    async def _report_fate(self, sms: SentSms) -> None:
        await self.send_status_callback(sms.sid, "sent")
        code = self.delivery_failures.get(sms.to)
        if code is None:
            await self.send_status_callback(sms.sid, "delivered")
        else:
            await self.send_status_callback(sms.sid, "undelivered", error_code=code)

    async def _post_signed(self, url: str, params: dict[str, str]) -> int:
        headers = {
            "X-Twilio-Signature": self.sign(url, params),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            "User-Agent": "TwilioProxy/1.1",
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.post(url, data=params, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0  # Twilio would retry later; the fake only records the failure

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().stop()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _is_e164(number: str) -> bool:
    try:
        return normalize_phone(number, require_valid=False) == number
    except ValueError:
        return False
