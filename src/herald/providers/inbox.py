"""The in-app channel's provider: store the item in the user's inbox and push it live to
the user's open event streams. Storing it is delivering it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import structlog

from herald.clock import SYSTEM_CLOCK, Clock
from herald.domain import Accepted, Channel, Outcome
from herald.live import LiveHub
from herald.providers.base import OutboundMessage, Provider
from herald.storage import InboxItem, new_id
from herald.storage.inbox import InboxRepository

log = structlog.get_logger()


def inbox_item_json(item: InboxItem) -> dict[str, object]:
    return {
        "id": item.id,
        "delivery_id": item.delivery_id,
        "notification_id": item.notification_id,
        "category": item.category,
        "title": item.title,
        "body": item.body,
        "data": item.data,
        "read": item.read_at is not None,
        "read_at": item.read_at.isoformat() if item.read_at else None,
        "created_at": item.created_at.isoformat(),
        "sends": item.sends,
    }


class InboxProvider(Provider):
    name: ClassVar[str] = "inbox"
    channel: ClassVar[Channel] = Channel.IN_APP
    batch_size: ClassVar[int] = 500

    def __init__(self, inbox: InboxRepository, hub: LiveHub, clock: Clock = SYSTEM_CLOCK) -> None:
        self.inbox = inbox
        self.hub = hub
        self.clock = clock

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        now = self.clock.now()
        items = [
            InboxItem(
                id=new_id(),
                user_id=m.user_id,
                delivery_id=m.delivery_id,
                notification_id=m.notification_id,
                category=m.category,
                title=m.payload.get("title"),
                body=m.payload.get("body"),
                data=m.payload.get("data") or {},
                read_at=None,
                created_at=now,
            )
            for m in messages
        ]
        for item in await self.inbox.insert(items):
            await self._publish_live(item)
        return [Accepted(provider_message_id=m.delivery_id, delivered=True) for m in messages]

    async def _publish_live(self, item: InboxItem) -> None:
        """The item is delivered once it is stored; the live update only spares open
        streams a re-read. A failed one must not fail the send: the delivery would be
        retried and the item stored again (each retry one more copy in the inbox)."""
        try:
            await self.hub.publish(item.user_id, inbox_item_json(item))
        except Exception as error:
            log.warning(
                "inbox item stored, its live update not sent",
                delivery_id=item.delivery_id,
                error=f"{type(error).__name__}: {error}",
            )
