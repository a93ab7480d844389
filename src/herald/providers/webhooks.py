"""Provider webhooks: verify the signature, then turn the body into WebhookEvents.

Framework-free: each parser takes the URL, the headers, the raw body bytes and its
secrets, and either returns events or raises WebhookRejected (the API answers 401).

- Twilio (status callbacks and inbound STOP/START): X-Twilio-Signature, HMAC-SHA1.
- SendGrid event webhook: ECDSA P-256/SHA-256 over timestamp + body, replay window.
- SES through SNS: RSA signature (SignatureVersion 1 SHA1, 2 SHA256) with the
  certificate at SigningCertURL, fetched only from trusted URLs; replay window.

Event `kind` says what happened to the message; `permanent` says the *address* is dead
or opted out and should be suppressed (a hard bounce, a complaint, STOP), as opposed to a
failure of this one message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.providers.email_message import DELIVERY_ID_HEADER, delivery_id_from_message_id

WebhookKind = Literal[
    "delivered",
    "bounced",
    "complained",
    "failed",
    "unsubscribed",
    "opt_out",
    "opt_in",
    "deferred",
    "opened",
    "clicked",
    "subscription_confirmation",  # SNS: the API should GET detail["subscribe_url"]
]


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    provider: str
    provider_message_id: str | None
    delivery_id: str | None
    kind: WebhookKind
    address: str | None
    permanent: bool
    detail: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None
    # The provider's ids for this event (Twilio: the signed MessageSid with its status,
    # then the I-Twilio-Idempotency-Token; SendGrid: sg_event_id; SNS: MessageId). The
    # caller drops an event when any of them was seen before: a retry or a replay.
    event_ids: tuple[str, ...] = ()


class WebhookRejected(Exception):
    """Not authentic, too old, or not understood: answer 401 and process nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownWebhookProvider(WebhookRejected):
    """No such provider (the API may answer 404 instead of 401)."""


class WebhookNotAllowed(WebhookRejected):
    """Authentic or not, this deployment does not take it (an SNS topic that is not on the
    allow-list, or SNS webhooks with no allow-list at all): the API answers 403."""


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup on any mapping."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


# --------------------------------------------------------------------------- Twilio

TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio's default opt-out and opt-in keywords (case-insensitive, whole message).
TWILIO_STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
TWILIO_START_WORDS = frozenset({"START", "YES", "UNSTOP"})
TWILIO_OPT_OUT_CODE = "21610"
TWILIO_DEAD_NUMBER_CODES = frozenset({"21211", "21614", "30005", "30006"})


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(token, url + name1 + value1 + ...)) with names sorted, as
    twilio-python's RequestValidator computes it (repeated values sorted, deduplicated)."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    text = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_port_variants(url: str) -> list[str]:
    """The URL as given, and with the default port added or removed: Twilio signs what it
    requested, and a proxy may show the port differently (twilio-python does the same)."""
    parts = urlsplit(url)
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    if default_port is None or parts.hostname is None:
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default_port}"))
    elif parts.port == default_port:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    else:
        return [url]
    return [url, other]


def verify_twilio(
    url: str, params: list[tuple[str, str]], signature: str | None, auth_token: str
) -> None:
    if not signature:
        raise WebhookRejected("missing X-Twilio-Signature")
    for candidate in _url_port_variants(url):
        expected = twilio_signature(auth_token, candidate, params)
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return
    raise WebhookRejected("bad X-Twilio-Signature")


def parse_twilio(
    *,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    auth_token: str,
    account_sid: str | None = None,
) -> list[WebhookEvent]:
    """A Twilio status callback or inbound message, verified.

    `url` is the full URL Twilio requested (the public URL, path and query string).
    Twilio signs no timestamp, so a replay cannot be told from a retry by time; the events
    are idempotent facts and detail["idempotency_token"] (I-Twilio-Idempotency-Token)
    lets the caller drop repeats."""
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise WebhookRejected("body is not a UTF-8 form") from exc
    verify_twilio(url, params, header(headers, TWILIO_SIGNATURE_HEADER), auth_token)
    form = dict(params)
    if account_sid is not None and form.get("AccountSid") != account_sid:
        raise WebhookRejected("callback for another Twilio account")
    detail: dict[str, Any] = {
        "idempotency_token": header(headers, "I-Twilio-Idempotency-Token"),
        "account_sid": form.get("AccountSid"),
    }
    if _is_inbound_message(form):
        event = _twilio_inbound(form, detail)
    else:
        event = _twilio_status(form, detail)
    if event is None:
        return []
    return [dataclasses.replace(event, event_ids=_twilio_event_ids(form, detail))]


def _twilio_event_ids(form: Mapping[str, str], detail: Mapping[str, Any]) -> tuple[str, ...]:
    """The signed MessageSid with the status it reports (an inbound message's sid names that
    message alone), then the idempotency token, which Twilio keeps across its retries but
    does not sign: a replay with a fresh token still repeats the signed sid."""
    ids: list[str] = []
    sid = form.get("MessageSid") or form.get("SmsSid")
    if sid:
        status = form.get("MessageStatus") or form.get("SmsStatus") or "received"
        ids.append(f"{sid}:{status}")
    token = detail.get("idempotency_token")
    if token:
        ids.append(f"token:{token}")
    return tuple(ids)


def _is_inbound_message(form: Mapping[str, str]) -> bool:
    return "Body" in form and form.get("MessageStatus", "received") == "received"


def _twilio_inbound(form: Mapping[str, str], detail: dict[str, Any]) -> WebhookEvent | None:
    # With Advanced Opt-Out Twilio names the keyword class itself.
    kind = form.get("OptOutType", "").upper()
    word = " ".join(form.get("Body", "").split()).upper()
    if kind == "STOP" or (not kind and word in TWILIO_STOP_WORDS):
        event_kind: WebhookKind = "opt_out"
    elif kind == "START" or (not kind and word in TWILIO_START_WORDS):
        event_kind = "opt_in"
    else:
        return None  # ordinary replies are not delivery events
    return WebhookEvent(
        provider="twilio",
        provider_message_id=form.get("MessageSid"),
        delivery_id=None,
        kind=event_kind,
        address=form.get("From"),
        permanent=event_kind == "opt_out",
        detail={**detail, "keyword": word, "to": form.get("To")},
    )


def _twilio_status(form: Mapping[str, str], detail: dict[str, Any]) -> WebhookEvent | None:
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    error_code = form.get("ErrorCode") or None
    kind: WebhookKind
    permanent = False
    if status == "delivered":
        kind = "delivered"
    elif status == "read":
        kind = "opened"
    elif status in ("undelivered", "failed"):
        kind, permanent = _twilio_failure(error_code)
    else:
        return None  # queued, sending, sent, accepted...: nothing new for Herald
    return WebhookEvent(
        provider="twilio",
        provider_message_id=form.get("MessageSid") or form.get("SmsSid"),
        delivery_id=None,
        kind=kind,
        address=form.get("To"),
        permanent=permanent,
        detail={**detail, "status": status, "error_code": error_code},
    )


def _twilio_failure(error_code: str | None) -> tuple[WebhookKind, bool]:
    if error_code == TWILIO_OPT_OUT_CODE:
        return "opt_out", True
    if error_code in TWILIO_DEAD_NUMBER_CODES:
        return "bounced", True
    return "failed", False


# --------------------------------------------------------------------------- SendGrid

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
SENDGRID_DELIVERY_ARG = "herald_delivery_id"
# Whether SendGrid re-signs a retried POST with a fresh timestamp is not documented
# (unconfirmed); 10 minutes tolerates clock skew and quick retries.
SENDGRID_MAX_AGE = timedelta(minutes=10)
MAX_CLOCK_SKEW = timedelta(minutes=5)


def load_sendgrid_public_key(key: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER SubjectPublicKeyInfo), or PEM."""
    try:
        if "BEGIN PUBLIC KEY" in key:
            loaded = serialization.load_pem_public_key(key.encode())
        else:
            loaded = serialization.load_der_public_key(base64.b64decode(key, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not a SendGrid webhook public key: {exc}") from exc
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise ValueError("the SendGrid webhook key must be an EC (P-256) public key")
    return loaded


def verify_sendgrid(
    headers: Mapping[str, str],
    body: bytes,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: datetime,
    max_age: timedelta = SENDGRID_MAX_AGE,
) -> None:
    signature = header(headers, SENDGRID_SIGNATURE_HEADER)
    timestamp = header(headers, SENDGRID_TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise WebhookRejected("missing SendGrid signature or timestamp")
    try:
        public_key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise WebhookRejected("bad SendGrid signature") from exc
    try:
        signed_at = datetime.fromtimestamp(int(timestamp), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise WebhookRejected("bad SendGrid timestamp") from exc
    _check_freshness(signed_at, now, max_age)


def _check_freshness(signed_at: datetime, now: datetime, max_age: timedelta) -> None:
    if now - signed_at > max_age:
        raise WebhookRejected(f"signed {now - signed_at} ago: older than {max_age}")
    if signed_at - now > MAX_CLOCK_SKEW:
        raise WebhookRejected("signed in the future")


def parse_sendgrid(
    *,
    headers: Mapping[str, str],
    body: bytes,
    public_key: str | ec.EllipticCurvePublicKey,
    now: datetime,
    max_age: timedelta = SENDGRID_MAX_AGE,
) -> list[WebhookEvent]:
    """A SendGrid event webhook POST (a JSON array of events), verified."""
    try:
        key = load_sendgrid_public_key(public_key) if isinstance(public_key, str) else public_key
    except ValueError as exc:
        raise WebhookRejected(f"HERALD_SENDGRID_WEBHOOK_KEY is unusable: {exc}") from exc
    verify_sendgrid(headers, body, key, now=now, max_age=max_age)
    try:
        raw_events = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookRejected("body is not JSON") from exc
    if not isinstance(raw_events, list):
        raise WebhookRejected("body is not a JSON array of events")
    events = (_sendgrid_event(raw) for raw in raw_events if isinstance(raw, dict))
    return [event for event in events if event is not None]


_SENDGRID_SIMPLE_KINDS: dict[str, tuple[WebhookKind, bool]] = {
    "delivered": ("delivered", False),
    "deferred": ("deferred", False),
    "spamreport": ("complained", True),
    "unsubscribe": ("unsubscribed", True),
    "group_unsubscribe": ("unsubscribed", True),
    "open": ("opened", False),
    "click": ("clicked", False),
}


def _sendgrid_event(raw: dict[str, Any]) -> WebhookEvent | None:
    name = str(raw.get("event", ""))
    kind: WebhookKind
    if name == "bounce":
        # type "blocked" is SendGrid's soft bounce (a temporary block by the receiver).
        kind, permanent = "bounced", raw.get("type", "bounce") != "blocked"
    elif name == "dropped":
        kind, permanent = _sendgrid_dropped(str(raw.get("reason", "")))
    elif name in _SENDGRID_SIMPLE_KINDS:
        kind, permanent = _SENDGRID_SIMPLE_KINDS[name]
    else:
        return None  # processed, group_resubscribe and future events
    sg_message_id = raw.get("sg_message_id")
    return WebhookEvent(
        provider="sendgrid",
        # sg_message_id is "<X-Message-Id>.<filter suffix>": the prefix is what send kept.
        provider_message_id=str(sg_message_id).split(".", 1)[0] if sg_message_id else None,
        delivery_id=_sendgrid_delivery_id(raw),
        kind=kind,
        address=raw.get("email"),
        permanent=permanent,
        detail={
            key: raw[key]
            for key in ("event", "sg_message_id", "sg_event_id", "reason", "status", "type")
            if key in raw
        },
        occurred_at=_epoch(raw.get("timestamp")),
        event_ids=(str(raw["sg_event_id"]),) if raw.get("sg_event_id") else (),
    )


def _sendgrid_dropped(reason: str) -> tuple[WebhookKind, bool]:
    lowered = reason.lower()
    if "unsubscribed" in lowered:
        return "unsubscribed", True
    if "spam" in lowered:
        return "complained", True
    # "Invalid" is SendGrid's reason for a malformed address; "Invalid SMTPAPI header"
    # is about the request, not the address.
    if "bounced" in lowered or lowered == "invalid" or "invalid address" in lowered:
        return "bounced", True
    return "failed", False


def _sendgrid_delivery_id(raw: Mapping[str, Any]) -> str | None:
    # The event webhook flattens custom_args into the event; accept a nested form too.
    for container in (raw, raw.get("custom_args"), raw.get("unique_args")):
        if isinstance(container, Mapping) and container.get(SENDGRID_DELIVERY_ARG):
            return str(container[SENDGRID_DELIVERY_ARG])
    return None


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# --------------------------------------------------------------------------- SES via SNS

SNS_CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com$")
# SNS retries a failed HTTP delivery with its original Timestamp, by default over under a
# minute, with a custom policy for up to hours (unconfirmed bound): an hour by default.
SNS_MAX_AGE = timedelta(hours=1)
MAX_CERTIFICATE_BYTES = 64 * 1024
# AWS rotates the signing certificate (a new SigningCertURL); an hour bounds how long a
# revoked one could still be used by a process that cached it.
SNS_CERTIFICATE_TTL = timedelta(hours=1)

_SNS_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SNS_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SNS_SIGNED_FIELDS["SubscriptionConfirmation"]
_SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}

CertificateFetcher = Callable[[str], Awaitable[bytes]]


def is_sns_url(url: str) -> bool:
    """https on sns.<region>.amazonaws.com, nothing else (no port, no credentials)."""
    parts = urlsplit(url)
    return (
        parts.scheme == "https"
        and parts.port is None
        and "@" not in parts.netloc
        and bool(SNS_CERT_HOST.match(parts.hostname or ""))
    )


async def fetch_over_https(url: str) -> bytes:
    """Production fetcher: a small GET over verified HTTPS."""
    import aiohttp  # only the production path needs the network

    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, allow_redirects=False) as response,
    ):
        if response.status != 200:
            raise WebhookRejected(f"signing certificate answered {response.status}")
        data = await response.content.read(MAX_CERTIFICATE_BYTES + 1)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise WebhookRejected("signing certificate too large")
    return data


class SnsCertificates:
    """Signing certificates by URL, fetched only from trusted URLs and cached.

    One instance serves every request of a process (the API keeps it in its WebhookConfig):
    a certificate is fetched once per SigningCertURL and kept for `ttl`, at most
    `max_cached` of them (the oldest goes first). Trust rests on where the certificate
    comes from (HTTPS from an SNS host). Tests pass their own `fetch` and `is_trusted` and a
    locally generated certificate: no network."""

    def __init__(
        self,
        fetch: CertificateFetcher | None = None,
        *,
        is_trusted: Callable[[str], bool] = is_sns_url,
        max_cached: int = 32,
        ttl: timedelta = SNS_CERTIFICATE_TTL,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._fetch = fetch
        self.is_trusted = is_trusted
        self._max_cached = max_cached
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[datetime, x509.Certificate]] = {}

    async def get(self, url: str) -> x509.Certificate:
        if not self.is_trusted(url):
            raise WebhookRejected(f"untrusted SigningCertURL {url!r}")
        now = self._clock.now()
        cached = self._cache.get(url)
        if cached is not None and now < cached[0]:
            return cached[1]
        fetch = self._fetch or fetch_over_https
        try:
            certificate = x509.load_pem_x509_certificate(await fetch(url))
        except WebhookRejected:
            raise
        except Exception as exc:  # any fetch or parse failure means "cannot verify"
            raise WebhookRejected(f"cannot load signing certificate: {exc}") from exc
        self._cache.pop(url, None)
        while len(self._cache) >= self._max_cached:
            self._cache.pop(next(iter(self._cache)))
        self._cache[url] = (now + self._ttl, certificate)
        return certificate


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical "Name\\nvalue\\n" text SNS signs (Subject only when present)."""
    fields = _SNS_SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise WebhookRejected(f"unknown SNS message type {message.get('Type')!r}")
    lines = []
    for name in fields:
        if name not in message or message[name] is None:
            if name == "Subject":
                continue
            raise WebhookRejected(f"SNS message lacks {name}")
        lines.append(f"{name}\n{message[name]}\n")
    return "".join(lines).encode()


async def verify_sns(
    message: Mapping[str, Any],
    certificates: SnsCertificates,
    *,
    now: datetime,
    max_age: timedelta = SNS_MAX_AGE,
) -> None:
    hash_factory = _SNS_HASHES.get(str(message.get("SignatureVersion")))
    if hash_factory is None:
        raise WebhookRejected("unsupported or missing SNS SignatureVersion")
    signature_b64, cert_url = message.get("Signature"), message.get("SigningCertURL")
    if not isinstance(signature_b64, str) or not isinstance(cert_url, str):
        raise WebhookRejected("unsigned SNS message")
    certificate = await certificates.get(cert_url)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise WebhookRejected("SNS signing certificate is not valid now")
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise WebhookRejected("SNS signing certificate has no RSA key")
    try:
        public_key.verify(
            base64.b64decode(signature_b64, validate=True),
            sns_string_to_sign(message),
            padding.PKCS1v15(),
            hash_factory(),
        )
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise WebhookRejected("bad SNS signature") from exc
    _check_freshness(_iso_time(message.get("Timestamp")), now, max_age)


async def parse_ses(
    *,
    headers: Mapping[str, str],
    body: bytes,
    certificates: SnsCertificates,
    now: datetime,
    topic_arns: Collection[str],
    max_age: timedelta = SNS_MAX_AGE,
) -> list[WebhookEvent]:
    """An SNS POST carrying SES notifications, from one of `topic_arns`, verified.

    Anyone can create an SNS topic and sign with AWS's certificate, so the topic is what
    says the message is this deployment's: one not in `topic_arns` is refused
    (WebhookNotAllowed) before its certificate is fetched or anything is confirmed.
    SubscriptionConfirmation gives one event of kind "subscription_confirmation" whose
    detail["subscribe_url"] the caller GETs to confirm (checked against the same trusted
    URL rule as certificates); UnsubscribeConfirmation gives none. Every event carries the
    message's MessageId in event_ids."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookRejected("body is not JSON") from exc
    if not isinstance(message, dict):
        raise WebhookRejected("body is not an SNS message")
    declared = header(headers, "x-amz-sns-message-type")
    if declared is not None and declared != message.get("Type"):
        raise WebhookRejected("x-amz-sns-message-type does not match the body")
    topic = message.get("TopicArn")
    if not isinstance(topic, str) or topic not in topic_arns:
        raise WebhookNotAllowed(f"SNS topic {str(topic)[:300]!r} is not in HERALD_SNS_TOPIC_ARNS")
    await verify_sns(message, certificates, now=now, max_age=max_age)
    if message["Type"] == "SubscriptionConfirmation":
        events = [_subscription_confirmation(message, certificates)]
    elif message["Type"] != "Notification":
        return []
    else:
        try:
            notification = orjson.loads(str(message["Message"]))
        except orjson.JSONDecodeError as exc:
            raise WebhookRejected("SNS Message is not an SES notification") from exc
        events = _ses_events(notification) if isinstance(notification, dict) else []
    ids = (str(message["MessageId"]),)
    return [dataclasses.replace(event, event_ids=ids) for event in events]


def _subscription_confirmation(
    message: Mapping[str, Any], certificates: SnsCertificates
) -> WebhookEvent:
    subscribe_url = str(message.get("SubscribeURL", ""))
    if not certificates.is_trusted(subscribe_url):
        raise WebhookRejected(f"untrusted SubscribeURL {subscribe_url!r}")
    return WebhookEvent(
        provider="ses",
        provider_message_id=None,
        delivery_id=None,
        kind="subscription_confirmation",
        address=None,
        permanent=False,
        detail={"subscribe_url": subscribe_url, "topic_arn": message.get("TopicArn")},
        occurred_at=_iso_time_or_none(message.get("Timestamp")),
    )


def _ses_events(notification: Mapping[str, Any]) -> list[WebhookEvent]:
    # notificationType: identity notifications; eventType: configuration-set event publishing.
    kind_name = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail") or {}
    if kind_name == "Bounce":
        bounce = notification.get("bounce") or {}
        # Transient and Undetermined keep the address (AWS: only Permanent is a hard bounce).
        permanent = bounce.get("bounceType") == "Permanent"
        recipients = bounce.get("bouncedRecipients") or []
        return _ses_per_recipient(mail, "bounced", permanent, bounce, recipients)
    if kind_name == "Complaint":
        complaint = notification.get("complaint") or {}
        recipients = complaint.get("complainedRecipients") or []
        return _ses_per_recipient(mail, "complained", True, complaint, recipients)
    if kind_name == "Delivery":
        delivery = notification.get("delivery") or {}
        recipients = [{"emailAddress": r} for r in delivery.get("recipients") or []]
        return _ses_per_recipient(mail, "delivered", False, delivery, recipients)
    if kind_name == "DeliveryDelay":
        delay = notification.get("deliveryDelay") or {}
        recipients = delay.get("delayedRecipients") or []
        return _ses_per_recipient(mail, "deferred", False, delay, recipients)
    if kind_name == "Reject":
        reject = notification.get("reject") or {}
        recipients = [{"emailAddress": r} for r in mail.get("destination") or []]
        return _ses_per_recipient(mail, "failed", False, reject, recipients)
    return []


def _ses_per_recipient(
    mail: Mapping[str, Any],
    kind: WebhookKind,
    permanent: bool,
    section: Mapping[str, Any],
    recipients: list[Any],
) -> list[WebhookEvent]:
    delivery_id = _ses_delivery_id(mail)
    occurred_at = _iso_time_or_none(section.get("timestamp"))
    shared_detail = {
        key: section[key]
        for key in ("bounceType", "bounceSubType", "complaintFeedbackType", "smtpResponse")
        if key in section
    }
    return [
        WebhookEvent(
            provider="ses",
            provider_message_id=mail.get("messageId"),
            delivery_id=delivery_id,
            kind=kind,
            address=recipient.get("emailAddress") if isinstance(recipient, Mapping) else None,
            permanent=permanent,
            detail={**shared_detail, **_recipient_detail(recipient)},
            occurred_at=occurred_at,
        )
        for recipient in recipients
    ]


def _recipient_detail(recipient: Any) -> dict[str, Any]:
    if not isinstance(recipient, Mapping):
        return {}
    return {k: recipient[k] for k in ("status", "action", "diagnosticCode") if k in recipient}


def _ses_delivery_id(mail: Mapping[str, Any]) -> str | None:
    """From the tags Herald set, else from the original headers (when SES includes them)."""
    tags = mail.get("tags") or {}
    tagged = tags.get("herald_delivery_id") if isinstance(tags, Mapping) else None
    if isinstance(tagged, list) and tagged:
        return str(tagged[0])
    for item in mail.get("headers") or []:
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("name", "")).lower()
        if name == DELIVERY_ID_HEADER.lower():
            return str(item.get("value"))
        if name == "message-id":
            found = delivery_id_from_message_id(str(item.get("value")))
            if found:
                return found
    common = mail.get("commonHeaders") or {}
    return delivery_id_from_message_id(common.get("messageId"))


def _iso_time(value: Any) -> datetime:
    parsed = _iso_time_or_none(value)
    if parsed is None:
        raise WebhookRejected("missing or bad Timestamp")
    return parsed


def _iso_time_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- dispatch


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
