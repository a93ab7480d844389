"""Plain records the store takes and returns besides the domain objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from herald.domain import (
    CategorySettings,
    Channel,
    ChannelAddress,
    Delivery,
    DeliveryState,
    Device,
    FrequencyCap,
    Notification,
    Preferences,
    User,
)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    secret_hash: str
    scopes: tuple[str, ...]
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewNotification:
    notification: Notification
    idempotency_key: str
    request_hash: str
    content: dict[str, Any]
    api_key_id: str = ""  # whose idempotency key it is ('': Herald's own)

    @property
    def idempotency_scope(self) -> tuple[str, str]:
        return self.api_key_id, self.idempotency_key


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """`created` is False for a replay with the same body; `conflict` for another body;
    `unknown_user`: not accepted, its user does not exist (and `id` is empty)."""

    id: str
    idempotency_key: str
    created: bool
    conflict: bool = False
    unknown_user: bool = False


@dataclass(slots=True)
class RoutingInput:
    notification: Notification
    user: User | None
    preferences: Preferences
    devices: list[Device]
    category: CategorySettings
    template: dict[str, Any] | None
    suppressed: set[tuple[str, str]] = field(default_factory=set)
    channel_caps: Mapping[Channel, FrequencyCap] = field(default_factory=dict)
    addresses: list[ChannelAddress] = field(default_factory=list)  # the active ones


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """A worker's verdict on one claimed delivery, recorded with its event."""

    delivery_id: str
    notification_id: str
    state: DeliveryState
    provider: str | None = None
    provider_message_id: str | None = None
    last_error: str | None = None
    due_at: datetime | None = None
    attempts_refund: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    # The attempt this answers and when it was claimed (the log's `sending` entry).
    attempt: int | None = None
    claimed_at: datetime | None = None

    @property
    def told_by_row(self) -> bool:
        """A send with nothing to say beyond what the delivery row keeps (state, provider,
        the provider's message id, the attempt, its claim time and `sent_at`): it writes
        no log event, and the log shows it from the row (rows.sent_event)."""
        return self.state == DeliveryState.SENT and not self.detail and self.last_error is None


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """A provider's later word on a delivery (webhook): delivered, bounced, ..."""

    delivery_id: str | None
    provider_message_id: str | None
    state: DeliveryState
    provider: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """A delivery put back on the bus (due, or its lease expired)."""

    delivery_id: str
    user_id: str
    channel: str
    priority: str = "normal"


@dataclass(frozen=True, slots=True)
class InboxItem:
    id: str
    user_id: str
    delivery_id: str
    notification_id: str
    category: str
    title: str | None
    body: str | None
    data: dict[str, Any]
    read_at: datetime | None
    created_at: datetime
    sends: int = 1  # how many times the delivery reached the inbox (a repeat is counted)


@dataclass(frozen=True, slots=True)
class SandboxMessage:
    id: str
    channel: str
    provider: str
    user_id: str
    delivery_id: str
    target: str
    payload: dict[str, Any]
    created_at: datetime
    sends: int = 1  # how many sandbox rows (sends) this message's delivery has in all


@dataclass(frozen=True, slots=True)
class Suppression:
    id: str
    channel: str
    address: str
    reason: str
    created_at: datetime


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


__all__ = [
    "AcceptResult",
    "ApiKeyRecord",
    "Delivery",
    "DeliveryUpdate",
    "InboxItem",
    "NewNotification",
    "Page",
    "ProviderReport",
    "Released",
    "RoutingInput",
    "SandboxMessage",
    "Suppression",
]
