"""The one contract every provider implements.

A provider takes a batch of messages for one channel and answers, per message and in the
same order, with a typed outcome (herald.domain.outcomes). It never raises for a protocol
answer: a provider that cannot be reached (refused, reset, DNS, TLS, timeout) or refuses our
credentials is ProviderDown; an answer about one message or one target (a bad token, a
hostile Web Push endpoint) is that message's outcome and never ProviderDown. The worker
decides what each outcome means for the delivery (state, backoff, circuit, deactivation).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from herald.domain.channels import Channel, Priority
from herald.domain.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One delivery as a provider sees it.

    payload per channel (rendered by the router):
      push:   {"title", "body", "data": {str: Any}}  (title/body absent: a data-only message)
      email:  {"subject", "text", "html" (optional), "unsubscribe_url" (optional)}
      sms:    {"body"}
      in_app, webhook, chat: {"title", "body", "data"}
      whatsapp: {"body", "data" (optional)}
    target: the device token (push; for web the subscription endpoint), the email address,
    the E.164 phone number, the user id (in_app), or a channel address's target (a URL, a
    Slack channel id, a WhatsApp number); `platform` is the chat service for chat.
    `subscription` carries a Web Push
    subscription {"endpoint", "keys": {"p256dh", "auth"}}.
    """

    delivery_id: str
    notification_id: str
    user_id: str
    channel: Channel
    target: str
    payload: dict[str, Any]
    priority: Priority = Priority.NORMAL
    category: str = "default"
    platform: str | None = None
    subscription: dict[str, Any] | None = None
    # A webhook/chat/WhatsApp address's config (the webhook's signing secret, ...).
    address: dict[str, Any] | None = None
    collapse_key: str | None = None
    expires_at: datetime | None = None
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def ttl_seconds(self, now: datetime) -> int:
        """Seconds left to live, at least 0; a day when the notification set no TTL."""
        if self.expires_at is None:
            return 86_400
        return max(0, int((self.expires_at - now).total_seconds()))


class WrongOutcomeCount(Exception):
    """A provider's `send` answered a different number of outcomes than it was given
    messages (a provider bug): the worker retries every message of that call."""

    reason = "provider answered the wrong number of outcomes"

    def __init__(self, answered: int, given: int) -> None:
        super().__init__(f"{self.reason}: {answered} for {given} messages")


class Provider(abc.ABC):
    """Base class of every provider module (one module per service, as apprise does)."""

    name: ClassVar[str]
    channel: ClassVar[Channel]
    # How many messages the worker hands over at once, and how many may be in flight.
    batch_size: ClassVar[int] = 100
    # Steady rate the provider documents (messages/second); None: no limit of ours.
    default_rate_per_s: ClassVar[float | None] = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, fetch tokens. Called once before the first send."""

    @abc.abstractmethod
    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """One outcome per message, in order. Must not raise for a provider answer."""

    async def send_each(
        self, messages: Sequence[OutboundMessage], report: Callable[[int, Outcome], None]
    ) -> None:
        """As `send`, but hands each outcome to `report(index, outcome)` as soon as it is
        known, so the worker records it at once instead of after the slowest message of
        the batch. Providers that send messages concurrently override it; this default
        reports when `send` returns."""
        outcomes = await self.send(messages)
        if len(outcomes) != len(messages):
            # Outcomes are matched to messages by position: a miscount matches none.
            raise WrongOutcomeCount(len(outcomes), len(messages))
        for index, outcome in enumerate(outcomes):
            report(index, outcome)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close connections."""

    def describe(self) -> str:
        """One line for the startup banner (no secrets)."""
        return self.name
