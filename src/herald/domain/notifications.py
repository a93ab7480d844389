"""Notifications as accepted from the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from herald.domain.channels import Channel, Priority


class NotificationState(StrEnum):
    ACCEPTED = "accepted"
    ROUTED = "routed"
    CANCELLED = "cancelled"
    FAILED = "failed"  # could not be routed: set aside, the reason in its delivery log


def state_told(stored: NotificationState, has_deliveries: bool) -> NotificationState:
    """A notification's state as clients see it. Routing it gives it deliveries, and
    those say that it was routed: its row stays `accepted` (one write fewer per
    notification; migration 0018). Only a notification planned no delivery at all (no
    user, no channel of theirs) is stored as `routed`."""
    if stored == NotificationState.ACCEPTED and has_deliveries:
        return NotificationState.ROUTED
    return stored


@dataclass(slots=True)
class Notification:
    id: str
    user_id: str
    category: str
    priority: Priority
    title: str | None
    body: str | None
    data: dict[str, Any] = field(default_factory=dict)
    channels: tuple[Channel, ...] | None = None
    ttl_seconds: int | None = None
    send_at: datetime | None = None
    template: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    collapse_key: str | None = None
    push: dict[str, Any] = field(default_factory=dict)  # rich push options (API PushIn)
    deliver_at_local: str | None = None  # "HH:MM" in the recipient's time zone
    broadcast_id: str | None = None
    digest_id: str | None = None  # set on a digest's own notification: never folded again
    idempotency_key: str | None = None
    workflow_run_id: str | None = None  # made by a workflow run's send step
    workflow_step: str | None = None
    state: NotificationState = NotificationState.ACCEPTED
    created_at: datetime | None = None
