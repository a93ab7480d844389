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
