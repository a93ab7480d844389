"""A protocol-faithful fake of SendGrid v3 Mail Send and of its signed Event Webhook.

`POST /v3/mail/send` with `Authorization: Bearer <key>` and a JSON body. The fake checks
the key, the body's shape (personalizations, from, subject, content order, custom_args,
headers) and size, and answers 202 with `X-Message-Id`, or SendGrid's error body
{"errors": [{"field", "message"}]}; every answer carries X-RateLimit-Limit/Remaining/Reset.

It can be told per address to answer a status (`fail_address`), to add latency or fail a
fraction with 503 (FakeServer) or 429 (`throttle_fraction`), and to enforce a request
budget per window (`rate_limit`). It holds an ECDSA P-256 key pair and signs event webhook
payloads the way SendGrid does (`signed_events`, `post_events`); `public_key_base64` is
what an operator pastes into HERALD_SENDGRID_WEBHOOK_KEY.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.fakes.common import FakeServer, Fault, Request, Response, json_response
from herald.providers.sendgrid.webhook import SENDGRID_SIGNATURE_HEADER, SENDGRID_TIMESTAMP_HEADER

SEND_PATH = "/v3/mail/send"
MAX_MESSAGE_BYTES = 30 * 1024 * 1024  # SendGrid: the whole message under 30 MB
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
# Headers SendGrid sets itself and refuses in `headers` (per its Mail Send reference).
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")

STATUS_MESSAGES = {
    400: "Bad Request",
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    413: "Payload Too Large",
    429: "too many requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

ErrorList = list[tuple[str | None, str]]


@dataclass(slots=True)
class SentMail:
    message_id: str
    body: dict[str, Any]

    @property
    def recipients(self) -> list[str]:
        return [to["email"] for p in self.body["personalizations"] for to in p.get("to", [])]

    @property
    def custom_args(self) -> dict[str, str]:
        return dict(self.body.get("custom_args") or {})


class FakeSendGrid(FakeServer):
    def __init__(
        self,
        *,
        api_key: str | None = None,
        forbidden_keys: frozenset[str] = frozenset(),
        rate_limit: int = 600,
        rate_window_s: float = 60.0,
        throttle_fraction: float = 0.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        **server_options: Any,
    ) -> None:
        super().__init__(**server_options)
        self.api_key = api_key or "SG." + secrets.token_urlsafe(16) + "." + secrets.token_urlsafe(
            32
        )
        self.forbidden_keys = forbidden_keys  # valid keys without the mail.send scope
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.throttle_fraction = throttle_fraction
        self.max_message_bytes = max_message_bytes
        self.received: list[SentMail] = []
        self._window_start = 0.0
        self._window_used = 0
        self._signing_key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key_base64(self) -> str:
        der = self._signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def fail_address(
        self, email: str, status: int, *, times: int | None = None, retry_after: float | None = None
    ) -> None:
        """Answer sends to `email` with HTTP `status` and SendGrid's error body."""
        self.faults.add(email.lower(), Fault(str(status), times=times, retry_after=retry_after))

    # -- mail send ----------------------------------------------------------------------

    def unavailable(self) -> Response:
        return self._error(503, [(None, STATUS_MESSAGES[503])])

    async def handle(self, request: Request) -> Response:
        if request.path != SEND_PATH:
            return self._error(404, [(None, "resource not found")])
        if request.method != "POST":
            return self._error(405, [(None, "method not allowed")])
        auth_error = self._check_auth(request.header("authorization"))
        if auth_error is not None:
            return auth_error
        if not self._take_budget() or (
            self.throttle_fraction and self._random.random() < self.throttle_fraction
        ):
            return self._error(429, [(None, STATUS_MESSAGES[429])])
        if len(request.body) > self.max_message_bytes:
            return self._error(413, [(None, STATUS_MESSAGES[413])])
        return self._send(request.body)

    def _check_auth(self, authorization: str | None) -> Response | None:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return self._error(401, [(None, "authorization required")])
        if key in self.forbidden_keys:
            return self._error(403, [(None, STATUS_MESSAGES[403])])
        if not secrets.compare_digest(key, self.api_key):
            return self._error(401, [(None, STATUS_MESSAGES[401])])
        return None

    def _send(self, raw: bytes) -> Response:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(400, [(None, "Invalid JSON")])
        errors: ErrorList = [(None, "Bad Request")]
        if isinstance(body, dict):
            errors = validate_mail_send(body)
        if errors:
            return self._error(400, errors)
        mail = SentMail(message_id=secrets.token_urlsafe(16)[:22], body=body)
        for address in mail.recipients:
            fault = self.faults.take(address.lower())
            if fault is not None:
                return self._fault_answer(fault)
        self.received.append(mail)
        return Response(202, b"", (*self._rate_headers(), ("x-message-id", mail.message_id)))

    def _fault_answer(self, fault: Fault) -> Response:
        status = int(fault.kind)
        extra = (("retry-after", str(int(fault.retry_after))),) if fault.retry_after else ()
        return self._error(status, [(None, STATUS_MESSAGES.get(status, "error"))], extra)

    def _take_budget(self) -> bool:
        now = self.clock.time()
        if now - self._window_start >= self.rate_window_s:
            self._window_start, self._window_used = now, 0
        if self._window_used >= self.rate_limit:
            return False
        self._window_used += 1
        return True

    def _rate_headers(self) -> tuple[tuple[str, str], ...]:
        reset = int(self._window_start + self.rate_window_s)
        return (
            ("x-ratelimit-limit", str(self.rate_limit)),
            ("x-ratelimit-remaining", str(max(0, self.rate_limit - self._window_used))),
            ("x-ratelimit-reset", str(reset)),
        )

    def _error(
        self, status: int, errors: ErrorList, extra: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        body = {"errors": [{"field": f, "message": m, "help": None} for f, m in errors]}
        return json_response(status, body, (*self._rate_headers(), *extra))

    # -- event webhook ---------------------------------------------------------------------

    def event(self, mail: SentMail, event: str = "delivered", **fields: Any) -> dict[str, Any]:
        """One event about `mail` in the webhook's shape; custom_args are flattened into it
        as SendGrid does."""
        return {
            "email": mail.recipients[0],
            "timestamp": int(self.clock.time()),
            "smtp-id": f"<{mail.message_id}@ismtpd0001p1las1.sendgrid.net>",
            "event": event,
            "category": [],
            "sg_event_id": secrets.token_urlsafe(16),
            "sg_message_id": f"{mail.message_id}.filterdrecv-{secrets.token_hex(4)}-1-0",
            **mail.custom_args,
            **fields,
        }

    def signed_events(
        self, events: list[dict[str, Any]], *, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The raw body and the signature headers of an event webhook POST."""
        body = orjson.dumps(events)
        stamp = str(int(self.clock.time()) if timestamp is None else timestamp)
        signature = self._signing_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            SENDGRID_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            SENDGRID_TIMESTAMP_HEADER: stamp,
            "Content-Type": "application/json",
        }
        return body, headers

    async def post_events(self, url: str, events: list[dict[str, Any]]) -> int:
        """POST signed events to Herald's webhook; returns the HTTP status it answered."""
        body, headers = self.signed_events(events)
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            await response.read()
            return response.status


def validate_mail_send(body: dict[str, Any]) -> ErrorList:
    """SendGrid's checks on a Mail Send body, as (field, message) pairs."""
    errors: ErrorList = []
    errors += _check_personalizations(body.get("personalizations"))
    errors += _check_from(body.get("from"))
    errors += _check_subject(body)
    errors += _check_content(body)
    errors += _check_custom_args(body.get("custom_args"))
    errors += _check_headers(body.get("headers"))
    return errors


def _check_personalizations(value: Any) -> ErrorList:
    if not isinstance(value, list) or not value:
        return [
            (
                "personalizations",
                "The personalizations field is required and must have at least one "
                "personalization.",
            )
        ]
    errors: ErrorList = []
    total = 0
    for i, personalization in enumerate(value):
        to = personalization.get("to") if isinstance(personalization, dict) else None
        if not isinstance(to, list) or not to:
            errors.append((f"personalizations.{i}.to", "The to array is required."))
            continue
        total += len(to)
        for j, recipient in enumerate(to):
            email = recipient.get("email") if isinstance(recipient, dict) else None
            if not isinstance(email, str) or not _EMAIL.match(email):
                errors.append(
                    (f"personalizations.{i}.to.{j}.email", "Does not contain a valid address.")
                )
    if total > MAX_RECIPIENTS:
        errors.append(
            ("personalizations", f"The total number of recipients must be at most {MAX_RECIPIENTS}")
        )
    return errors


def _check_from(value: Any) -> ErrorList:
    email = value.get("email") if isinstance(value, dict) else None
    if not isinstance(email, str) or not _EMAIL.match(email):
        return [
            (
                "from.email",
                "The from object must be provided for every email send. It is an object "
                "that requires an email parameter, but may also contain a name parameter.",
            )
        ]
    return []


def _check_subject(body: dict[str, Any]) -> ErrorList:
    if body.get("template_id"):
        return []
    personalizations = body.get("personalizations") or []
    every_one_has_a_subject = bool(personalizations) and all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    )
    subject = body.get("subject")
    if (isinstance(subject, str) and subject) or every_one_has_a_subject:
        return []
    return [
        (
            "subject",
            "The subject is required. You can get around this requirement if you use a "
            "template with a subject defined or if every personalization has a subject defined.",
        )
    ]


def _check_content(body: dict[str, Any]) -> ErrorList:
    content = body.get("content")
    if body.get("template_id") and content is None:
        return []
    if not isinstance(content, list) or not content:
        return [
            (
                "content",
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block.",
            )
        ]
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not block.get("type") or not block.get("value"):
            return [(f"content.{i}", "Content blocks need a type and a non-empty value.")]
    types = [block["type"] for block in content]
    html_before_text = "text/plain" in types and types.index("text/plain") != 0
    if html_before_text:
        return [
            (
                "content",
                "If present, text/plain must be first, followed by text/html, followed by any "
                "other content.",
            )
        ]
    return []


def _check_custom_args(value: Any) -> ErrorList:
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return [("custom_args", "custom_args values must be strings")]
    if len(orjson.dumps(value)) > MAX_CUSTOM_ARGS_BYTES:
        return [("custom_args", f"custom_args must be under {MAX_CUSTOM_ARGS_BYTES} bytes")]
    return []


def _check_headers(value: Any) -> ErrorList:
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return [("headers", "headers values must be strings")]
    reserved = sorted(name for name in value if name.lower() in RESERVED_HEADERS)
    if reserved:
        return [("headers", f"The following headers are reserved: {', '.join(reserved)}")]
    return []
