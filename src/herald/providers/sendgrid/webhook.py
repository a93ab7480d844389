"""SendGrid event webhook: ECDSA P-256/SHA-256 over timestamp + body, replay window."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.providers.events import (
    WebhookEvent,
    WebhookKind,
    WebhookRejected,
    check_freshness,
    header,
)

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
SENDGRID_DELIVERY_ARG = "herald_delivery_id"
# Whether SendGrid re-signs a retried POST with a fresh timestamp is not documented
# (unconfirmed); 10 minutes tolerates clock skew and quick retries.
SENDGRID_MAX_AGE = timedelta(minutes=10)


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
    check_freshness(signed_at, now, max_age)


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
