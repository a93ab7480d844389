"""Deliveries: one copy of a notification on one channel to one target, and its state machine."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from herald.domain.channels import Channel, DeliveryPolicy, Priority

_DELIVERY_NAMESPACE = uuid.UUID("6f1d6f0e-4a39-4f57-9d0b-3f0c5a0e7b11")


class DeliveryState(StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNDELIVERABLE = "undeliverable"
    SKIPPED = "skipped"
    DIGESTED = "digested"  # folded into a digest, which is a notification of its own
    UNKNOWN = "unknown"


S = DeliveryState

# Every allowed transition. A provider webhook may report a later fate of a delivery that
# was sent (delivered, bounced), so sent and delivered have ways out; the rest are final.
TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    S.QUEUED: frozenset({S.SENDING, S.DEFERRED, S.SKIPPED, S.FAILED, S.DIGESTED}),
    S.DEFERRED: frozenset({S.QUEUED, S.SENDING, S.SKIPPED, S.FAILED, S.DIGESTED}),
    S.SENDING: frozenset(
        {S.SENT, S.DELIVERED, S.FAILED, S.UNDELIVERABLE, S.DEFERRED, S.QUEUED, S.UNKNOWN}
    ),
    S.SENT: frozenset({S.DELIVERED, S.FAILED, S.UNDELIVERABLE}),
    S.DELIVERED: frozenset({S.UNDELIVERABLE}),
    S.FAILED: frozenset(),
    S.UNDELIVERABLE: frozenset(),
    S.SKIPPED: frozenset(),
    # digested: waiting in an open digest window; cancelling takes it out again.
    S.DIGESTED: frozenset({S.SKIPPED}),
    # unknown: the lease ran out mid-send and at_most_once forbids sending again; the
    # provider's answer, arriving late from a worker that was slow rather than dead, or
    # a webhook, still settles what happened.
    S.UNKNOWN: frozenset({S.SENT, S.DELIVERED, S.FAILED, S.UNDELIVERABLE}),
}

FINAL_STATES: frozenset[DeliveryState] = frozenset(s for s, out in TRANSITIONS.items() if not out)
# States from which a worker may claim a delivery (deferred only once it is due).
CLAIMABLE_STATES: frozenset[DeliveryState] = frozenset({S.QUEUED, S.DEFERRED})
# States in which the provider has taken the message.
HANDED_OVER_STATES: frozenset[DeliveryState] = frozenset({S.SENT, S.DELIVERED})
# Waiting to be sent: a cancel, or a device that went away, skips them.
WAITING_STATES: frozenset[DeliveryState] = frozenset({S.QUEUED, S.DEFERRED})
# Not final and not yet with the provider: a message no worker can process sets these aside
# as failed.
UNSENT_STATES: frozenset[DeliveryState] = frozenset({S.QUEUED, S.DEFERRED, S.SENDING})
# What an operator may replay from the dead-letter queue: queued again with a fresh retry
# budget. The one way out of a final state, outside TRANSITIONS because Herald itself never
# takes it (storage/guards.py REPLAY).
REPLAYABLE_STATES: frozenset[DeliveryState] = frozenset({S.FAILED})
# The provider's answer that settles an `unknown` delivery (its lease ran out mid-send).
LATE_ANSWER_STATES: frozenset[DeliveryState] = TRANSITIONS[S.UNKNOWN]
# What a provider webhook may report, from each state: a later fate of a send.
WEBHOOK_TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    S.SENDING: frozenset({S.DELIVERED, S.FAILED, S.UNDELIVERABLE}),
    S.SENT: TRANSITIONS[S.SENT],
    S.DELIVERED: TRANSITIONS[S.DELIVERED],
    S.UNKNOWN: frozenset({S.DELIVERED, S.UNDELIVERABLE}),
}


class InvalidTransition(ValueError):
    def __init__(self, current: DeliveryState, new: DeliveryState) -> None:
        super().__init__(f"delivery cannot go from {current} to {new}")
        self.current = current
        self.new = new


def can_transition(current: DeliveryState, new: DeliveryState) -> bool:
    return new in TRANSITIONS[current]


def check_transition(current: DeliveryState, new: DeliveryState) -> DeliveryState:
    if not can_transition(current, new):
        raise InvalidTransition(current, new)
    return new


def delivery_id(notification_id: str, channel: Channel, target_ref: str) -> str:
    """Deterministic: the same notification, channel and target always give the same id.

    A redelivered bus message or a restarted router therefore writes the same rows
    (ON CONFLICT DO NOTHING) instead of new ones, and the claim makes the send happen once.
    """
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{notification_id}\x1f{channel}\x1f{target_ref}"))


@dataclass(slots=True)
class Delivery:
    id: str
    notification_id: str
    user_id: str
    channel: Channel
    target: str
    target_ref: str
    state: DeliveryState
    policy: DeliveryPolicy
    priority: Priority
    payload: dict[str, Any]
    category: str = "default"
    attempts: int = 0
    provider: str | None = None
    platform: str | None = None
    provider_message_id: str | None = None
    last_error: str | None = None
    due_at: datetime | None = None
    expires_at: datetime | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    claimed_at: datetime | None = None  # when attempt number `attempts` was claimed


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    delivery_id: str
    notification_id: str
    # A state the delivery entered, or (herald.domain.engagement.Engagement) a report of
    # what the recipient did with it.
    state: StrEnum
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None


def mask_target(channel: Channel, target: str) -> str:
    """What the API shows of a token, address or number: enough to recognise it, no more."""
    if not target:
        return ""
    if channel == Channel.EMAIL and "@" in target:
        local, _, domain = target.partition("@")
        return f"{local[:1]}***@{domain}"
    if channel in (Channel.SMS, Channel.WHATSAPP):
        return f"{target[:3]}***{target[-2:]}"
    if channel in (Channel.WEBHOOK, Channel.CHAT) and target.startswith("https://"):
        # A webhook URL's path is often its credential (Slack, Teams, Discord): host only.
        host = target.removeprefix("https://").split("/", 1)[0]
        return f"https://{host}/…"
    if channel == Channel.PUSH:
        return f"{target[:6]}…{target[-4:]}" if len(target) > 12 else "***"
    return target
