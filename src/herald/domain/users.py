"""Users and their devices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from herald.domain.channels import AddressKind, Platform


@dataclass(slots=True)
class User:
    id: str
    email: str | None = None
    phone: str | None = None
    timezone: str = "UTC"
    locale: str = "en"
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class Device:
    id: str
    user_id: str
    platform: Platform
    token: str
    active: bool = True
    subscription: dict[str, Any] | None = None
    deactivated_reason: str | None = None
    created_at: datetime | None = None


@dataclass(slots=True)
class ChannelAddress:
    """Where a user is reached on a webhook, chat or WhatsApp channel (one per kind).

    target: the URL (webhook, incoming webhooks), the Slack channel id (bot token), or the
    E.164 number (WhatsApp). config: what the provider needs besides (the webhook's signing
    secret, a WhatsApp content template).
    """

    id: str
    user_id: str
    kind: AddressKind
    target: str
    config: dict[str, Any]
    active: bool = True
    deactivated_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
