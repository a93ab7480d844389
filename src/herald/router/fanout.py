"""Broadcast fan-out: one bus message per page of the audience (of a broadcast, or of a
workflow trigger for a topic, whose pages are workflow runs instead of notifications).

A page message names the broadcast and the last user id of the previous page. Handling it
reads the next page (keyset order, so no process holds the audience), accepts one
notification per recipient with a deterministic id and idempotency key (so a replayed page
creates nobody twice), and publishes the message for the page after it, then commits.
Each recipient's notification then goes through the ordinary router: their own
preferences, quiet hours and channels.

A page is written only if the broadcast is not cancelled, judged in the page's own
transaction under the broadcast's row lock (a cancel takes the same lock first), so a
cancel is never followed by a page of new recipients.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from herald.bus.interface import BROADCASTS_TOPIC, Bus, Message, Record
from herald.bus.messages import ids_in
from herald.domain import Channel, Notification, Priority
from herald.domain.workflows import (
    Workflow,
    fanned_out_run_id,
    parse_workflow,
    workflow_to_json,
)
from herald.roles import consume_loop
from herald.storage import NewNotification
from herald.storage.broadcasts import BroadcastRepository
from herald.storage.workflows import TRIGGER_TEMPLATE, NewRun, WorkflowRepository
from herald.wakeups import Wake

log = structlog.get_logger()
PAGE_SIZE = 1000
_NAMESPACE = uuid.UUID("2b0f3f7e-1a3c-4f0e-9c55-6d1a0f4f8b21")


def page_record(broadcast_id: str, after: str | None) -> Record:
    body = orjson.dumps({"broadcast_id": broadcast_id, "after": after})
    return Record(BROADCASTS_TOPIC, broadcast_id, body)


def recipient_notification_id(broadcast_id: str, user_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{broadcast_id}\x1f{user_id}"))


def recipient_notification(broadcast: dict[str, Any], user_id: str) -> NewNotification:
    content: dict[str, Any] = broadcast["template"]
    notification = Notification(
        id=recipient_notification_id(broadcast["id"], user_id),
        user_id=user_id,
        category=content.get("category", "default"),
        priority=Priority(content.get("priority", "normal")),
        title=content.get("title"),
        body=content.get("body"),
        data=content.get("data") or {},
        channels=tuple(Channel(c) for c in content["channels"])
        if content.get("channels")
        else None,
        ttl_seconds=content.get("ttl_seconds"),
        send_at=_parse_time(content.get("send_at")),
        template=content.get("template"),
        variables=content.get("variables") or {},
        collapse_key=content.get("collapse_key"),
        push=content.get("push") or {},
        deliver_at_local=content.get("deliver_at_local"),
        broadcast_id=broadcast["id"],
    )
    stored = {
        k: content.get(k)
        for k in ("title", "body", "data", "template", "variables", "collapse_key", "push")
    }
    return NewNotification(
        notification,
        f"broadcast:{broadcast['id']}:{user_id}",
        broadcast["request_hash"],
        stored,
    )


def trigger_template(
    workflow: Workflow, given: dict[str, Any], cancellation_key: str | None
) -> dict[str, Any]:
    """What a topic trigger's broadcast row keeps: the definition as it was triggered
    (its runs start with it, as a direct trigger's do) and the trigger's input."""
    return {
        TRIGGER_TEMPLATE: {
            "key": workflow.key,
            "definition": workflow_to_json(workflow),
            "input": given,
            "cancellation_key": cancellation_key,
        }
    }


def trigger_run(broadcast: dict[str, Any], user_id: str) -> NewRun:
    trigger = broadcast["template"][TRIGGER_TEMPLATE]
    return NewRun(
        id=fanned_out_run_id(broadcast["id"], user_id),
        workflow=parse_workflow(trigger["key"], trigger["definition"]),
        user_id=user_id,
        idempotency_key=f"trigger:{broadcast['id']}",
        request_hash=broadcast["request_hash"],
        input=trigger["input"],
        api_key_id=broadcast["api_key_id"],
        cancellation_key=trigger["cancellation_key"],
    )


def _parse_time(value: str | None) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value) if value else None


class BroadcastFanout:
    group = "herald.fanout"

    def __init__(
        self,
        broadcasts: BroadcastRepository,
        bus: Bus,
        page_size: int = PAGE_SIZE,
        on_outbox: Wake | None = None,
        workflows: WorkflowRepository | None = None,
    ) -> None:
        self.broadcasts = broadcasts
        self.workflows = workflows
        self.bus = bus
        self.page_size = page_size
        self.on_outbox = on_outbox  # a page's notifications are in the outbox: wake the relay

    async def handle(self, messages: Sequence[Message]) -> None:
        for message in messages:
            try:
                page = orjson.loads(message.value)
                broadcast_id, after = str(page["broadcast_id"]), page.get("after")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("skipped a malformed broadcast page message")
                continue
            await self.fan_out_page(broadcast_id, after)

    async def fan_out_page(self, broadcast_id: str, after: str | None) -> int:
        broadcast = await self.broadcasts.get_broadcast(broadcast_id)
        if broadcast is None or broadcast["state"] == "cancelled":
            return 0
        users = await self.broadcasts.audience_page(
            topic=broadcast["topic"], broadcast_id=broadcast_id, after=after, limit=self.page_size
        )
        if users and not await self._accept_page(broadcast, users):
            return 0  # cancelled since it was read: the page is not written
        if users and self.on_outbox is not None:
            self.on_outbox()
        if len(users) == self.page_size:
            await self.bus.publish([page_record(broadcast_id, users[-1])])
        else:
            await self.broadcasts.set_broadcast_state(
                broadcast_id, "fanned_out", unless="cancelled"
            )
            log.info("broadcast fanned out", broadcast_id=broadcast_id)
        return len(users)

    async def _accept_page(self, broadcast: dict[str, Any], users: list[str]) -> bool:
        """A broadcast's page is one notification per user; a topic trigger's is one
        workflow run per user."""
        if TRIGGER_TEMPLATE in broadcast["template"]:
            if self.workflows is None:
                raise RuntimeError("a workflow trigger's page needs the workflow repository")
            runs = [trigger_run(broadcast, user) for user in users]
            return await self.workflows.accept_trigger_page(broadcast["id"], runs)
        notifications = [recipient_notification(broadcast, u) for u in users]
        return await self.broadcasts.accept_broadcast_page(broadcast["id"], notifications)

    async def set_aside(self, message: Message, reason: str) -> None:
        """A page that cannot be fanned out: the broadcast is `failed` (unless cancelled)."""
        for broadcast_id in ids_in([message], "broadcast_id"):
            await self.broadcasts.set_broadcast_state(broadcast_id, "failed", unless="cancelled")
            log.error("broadcast page set aside", broadcast_id=broadcast_id, reason=reason)

    async def run(self, stop: asyncio.Event) -> None:
        await consume_loop(
            self.bus,
            [BROADCASTS_TOPIC],
            self.group,
            self.handle,
            stop,
            batch_size=10,
            name="fanout",
            set_aside=self.set_aside,
        )
