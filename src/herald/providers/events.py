"""What a provider's status webhook says, as every provider's parser reports it.

Event `kind` says what happened to the message; `permanent` says the *address* is dead
or opted out and should be suppressed (a hard bounce, a complaint, STOP), as opposed to a
failure of this one message. A parser that cannot trust or read a body raises
WebhookRejected (the API answers 401).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

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


MAX_CLOCK_SKEW = timedelta(minutes=5)


def check_freshness(signed_at: datetime, now: datetime, max_age: timedelta) -> None:
    if now - signed_at > max_age:
        raise WebhookRejected(f"signed {now - signed_at} ago: older than {max_age}")
    if signed_at - now > MAX_CLOCK_SKEW:
        raise WebhookRejected("signed in the future")
