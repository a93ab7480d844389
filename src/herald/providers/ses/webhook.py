"""SES events through SNS: RSA signature (SignatureVersion 1 SHA1, 2 SHA256) with the
certificate at SigningCertURL, fetched only from trusted URLs; replay window."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from herald.clock import SYSTEM_CLOCK, Clock
from herald.providers.email_message import DELIVERY_ID_HEADER, delivery_id_from_message_id
from herald.providers.events import (
    WebhookEvent,
    WebhookKind,
    WebhookNotAllowed,
    WebhookRejected,
    check_freshness,
    header,
)

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
    check_freshness(_iso_time(message.get("Timestamp")), now, max_age)


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
