"""Rows <-> domain objects, cursors and pages: the one place that knows both."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa

from herald.bus.interface import Lane, lane_for
from herald.domain import (
    AddressKind,
    CategorySettings,
    Channel,
    ChannelAddress,
    Delivery,
    DeliveryEvent,
    DeliveryPolicy,
    DeliveryState,
    Device,
    DigestRule,
    FrequencyCap,
    Notification,
    NotificationState,
    Platform,
    Preferences,
    Priority,
    QuietHours,
    QuietHoursAction,
    User,
    default_digest_text,
    digest_variables,
    parse_wall_time,
)
from herald.domain.tracking import EmailTracking
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.records import ApiKeyRecord, InboxItem, NewNotification, Page, Suppression
from herald.storage.shaping import ClosedDigest

S = DeliveryState
T = TypeVar("T")
# A SQLAlchemy row, or a native Record (herald.storage.native): both read by attribute.
Row = Any


def new_id() -> str:
    return str(uuid.uuid4())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = orjson.dumps([created_at.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class InvalidCursor(ValueError):
    pass


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = orjson.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created_at), str(row_id)
    except (ValueError, TypeError) as error:
        raise InvalidCursor("cursor is not one this API returned") from error


def preferences_to_json(preferences: Preferences) -> dict[str, Any]:
    quiet = preferences.quiet_hours
    return {
        "channels": {str(k): v for k, v in preferences.channels.items()},
        "categories": {
            name: {str(k): v for k, v in chans.items()}
            for name, chans in preferences.categories.items()
        },
        "quiet_hours": (
            {"start": quiet.start.strftime("%H:%M"), "end": quiet.end.strftime("%H:%M")}
            if quiet
            else None
        ),
    }


def preferences_from_json(raw: dict[str, Any] | None) -> Preferences:
    raw = raw or {}
    quiet = raw.get("quiet_hours")
    return Preferences(
        channels={Channel(k): bool(v) for k, v in raw.get("channels", {}).items()},
        categories={
            name: {Channel(k): bool(v) for k, v in chans.items()}
            for name, chans in raw.get("categories", {}).items()
        },
        quiet_hours=(
            QuietHours(parse_wall_time(quiet["start"]), parse_wall_time(quiet["end"]))
            if quiet
            else None
        ),
    )


def category_from_json(name: str, raw: dict[str, Any]) -> CategorySettings:
    digests = {Channel(k): v for k, v in (raw.get("digest") or {}).items()}
    return CategorySettings(
        name=name,
        quiet_hours=QuietHoursAction(raw.get("quiet_hours", "defer")),
        channels=tuple(Channel(c) for c in raw.get("channels") or [c.value for c in Channel]),
        policy={Channel(k): DeliveryPolicy(v) for k, v in (raw.get("policy") or {}).items()},
        digest={k: _digest_rule(v) for k, v in digests.items() if v.get("when") != "over_cap"},
        over_cap_digest={
            k: _digest_rule(v) for k, v in digests.items() if v.get("when") == "over_cap"
        },
        caps={
            Channel(k): FrequencyCap(int(v["limit"]), int(v["window_seconds"]))
            for k, v in (raw.get("caps") or {}).items()
        },
        tracking=EmailTracking(**(raw.get("tracking") or {})),
    )


def _digest_rule(raw: dict[str, Any]) -> DigestRule:
    at_local = raw.get("at_local")
    return DigestRule(
        window_seconds=raw.get("window_seconds"),
        at_local=parse_wall_time(at_local) if at_local else None,
        template=raw.get("template"),
    )


def to_channel_address(row: Row) -> ChannelAddress:
    return ChannelAddress(
        id=row.id,
        user_id=row.user_id,
        kind=AddressKind(row.kind),
        target=row.target,
        config=dict(row.config or {}),
        active=row.active,
        deactivated_reason=row.deactivated_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_user(row: Row) -> User:
    return User(
        id=row.id,
        email=row.email,
        phone=row.phone,
        timezone=row.timezone,
        locale=row.locale,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_device(row: Row) -> Device:
    return Device(
        id=row.id,
        user_id=row.user_id,
        platform=Platform(row.platform),
        token=row.token,
        active=row.active,
        subscription=row.subscription,
        deactivated_reason=row.deactivated_reason,
        created_at=row.created_at,
    )


def to_notification(row: Row) -> Notification:
    content = row.content or {}
    return Notification(
        id=row.id,
        user_id=row.user_id,
        category=row.category,
        priority=Priority(row.priority),
        title=content.get("title"),
        body=content.get("body"),
        data=content.get("data") or {},
        channels=tuple(Channel(c) for c in row.channels) if row.channels is not None else None,
        ttl_seconds=row.ttl_seconds,
        send_at=row.send_at,
        template=content.get("template"),
        variables=content.get("variables") or {},
        collapse_key=content.get("collapse_key"),
        push=content.get("push") or {},
        idempotency_key=row.idempotency_key,
        state=NotificationState(row.state),
        created_at=row.created_at,
        deliver_at_local=row.deliver_at_local,
        broadcast_id=row.broadcast_id,
        digest_id=content.get("digest_id"),
        workflow_run_id=content.get("workflow_run_id"),
        workflow_step=content.get("workflow_step"),
    )


def to_delivery(row: Row) -> Delivery:
    return Delivery(
        id=row.id,
        notification_id=row.notification_id,
        user_id=row.user_id,
        channel=Channel(row.channel),
        target=row.target,
        target_ref=row.target_ref,
        state=S(row.state),
        policy=DeliveryPolicy(row.policy),
        priority=Priority(row.priority),
        category=row.category,
        payload=row.payload,
        attempts=row.attempts,
        provider=row.provider,
        platform=row.platform,
        provider_message_id=row.provider_message_id,
        last_error=row.last_error,
        due_at=row.due_at,
        expires_at=row.expires_at,
        lease_until=row.lease_until,
        created_at=row.created_at,
        updated_at=row.updated_at,
        claimed_at=row.claimed_at,
    )


def lane_order(priority: Priority) -> int:
    return t.URGENT_LANE_ORDER if lane_for(priority) == Lane.PRIORITY else t.BULK_LANE_ORDER


def attempt_detail(
    attempt: int | None,
    claimed_at: datetime | None,
    provider_message_id: str | None,
    error: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The detail of an attempt's outcome event: what the worker said, the attempt and its
    claim time (which stands for the attempt's `sending` entry), without empty values."""
    detail = {
        **(extra or {}),
        "attempt": attempt,
        "claimed_at": claimed_at.isoformat() if claimed_at else None,
        "error": error,
        "provider_message_id": provider_message_id,
    }
    return {k: v for k, v in detail.items() if v is not None}


# What a delivery row needs to stand for its send's log event (sent_event).
SENT_COLUMNS = (
    "id",
    "notification_id",
    "provider",
    "provider_message_id",
    "attempts",
    "claimed_at",
    "sent_at",
)


def sent_event(row: Row) -> DeliveryEvent:
    """The `sent` entry a delivery row with `sent_at` stands for: the event its worker did
    not write (DeliveryUpdate.told_by_row, migration 0017), as it would have written it."""
    return DeliveryEvent(
        row.id,
        row.notification_id,
        DeliveryState.SENT,
        row.sent_at,
        attempt_detail(row.attempts, row.claimed_at, row.provider_message_id),
        row.provider,
    )


def event_row(event: DeliveryEvent) -> dict[str, Any]:
    return {
        "delivery_id": event.delivery_id,
        "notification_id": event.notification_id,
        "state": event.state.value,
        "provider": event.provider,
        "detail": event.detail,
        "created_at": event.at,
    }


def paged(items: list[T], limit: int) -> Page[T]:
    if len(items) <= limit:
        return Page(items, None)
    last = items[limit - 1]
    return Page(items[:limit], encode_cursor(last.created_at, last.id))  # type: ignore[attr-defined]


def to_api_key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        row.id, row.secret_hash, tuple(row.scopes), row.name, row.created_at, row.revoked_at
    )


def to_suppression(row: Row) -> Suppression:
    return Suppression(row.id, row.channel, row.address, row.reason, row.created_at)


def to_inbox_item(row: Row) -> InboxItem:
    return InboxItem(
        row.id,
        row.user_id,
        row.delivery_id,
        row.notification_id,
        row.category,
        row.title,
        row.body,
        row.data or {},
        row.read_at,
        row.created_at,
        int(row.sends),
    )


def inbox_row(item: InboxItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "user_id": item.user_id,
        "delivery_id": item.delivery_id,
        "notification_id": item.notification_id,
        "category": item.category,
        "title": item.title,
        "body": item.body,
        "data": item.data,
        "read_at": item.read_at,
        "created_at": item.created_at,
    }


def digest_notification(digest: ClosedDigest) -> NewNotification:
    variables = {
        "digest": digest_variables(
            digest.category, digest.channel, digest.window, digest.items, digest.count
        )
    }
    title, body = default_digest_text(digest.count, digest.items)
    content: dict[str, Any] = {
        "title": title,
        "body": body,
        "variables": variables,
        "digest_id": digest.id,
    }
    if digest.template:
        content["template"] = digest.template
    notification = Notification(
        id=new_id(),
        user_id=digest.user_id,
        category=digest.category,
        priority=Priority.NORMAL,
        title=title,
        body=body,
        channels=(digest.channel,),
        template=digest.template,
        variables=variables,
        digest_id=digest.id,
    )
    return NewNotification(notification, f"digest:{digest.id}", digest.id, content)


def notification_row(item: NewNotification, now: datetime) -> dict[str, Any]:
    n = item.notification
    return {
        "id": n.id,
        "api_key_id": item.api_key_id,
        "idempotency_key": item.idempotency_key,
        "request_hash": item.request_hash,
        "user_id": n.user_id,
        "category": n.category,
        "priority": n.priority.value,
        "content": item.content,
        "channels": [c.value for c in n.channels] if n.channels is not None else None,
        "ttl_seconds": n.ttl_seconds,
        "send_at": n.send_at,
        "state": NotificationState.ACCEPTED.value,
        "created_at": now,
        "deliver_at_local": n.deliver_at_local,
        "broadcast_id": n.broadcast_id,
        "lane_order": lane_order(n.priority),
    }


def delivery_row(d: Delivery, now: datetime) -> dict[str, Any]:
    return {
        "id": d.id,
        "notification_id": d.notification_id,
        "user_id": d.user_id,
        "channel": d.channel.value,
        "platform": d.platform,
        "target": d.target,
        "target_ref": d.target_ref,
        "state": d.state.value,
        "policy": d.policy.value,
        "priority": d.priority.value,
        "category": d.category,
        "payload": d.payload,
        "attempts": d.attempts,
        "provider": d.provider,
        "last_error": d.last_error,
        "due_at": d.due_at,
        "expires_at": d.expires_at,
        "created_at": now,
        "updated_at": now,
    }


def routing_detail(d: Delivery) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if d.last_error:
        detail["reason"] = d.last_error
    if d.due_at:
        detail["due_at"] = d.due_at.isoformat()
    return detail


async def page(
    database: Database, query: sa.Select[Any], table: sa.Table, limit: int, cursor: str | None
) -> list[Row]:
    """Newest first, keyset-paginated on (created_at, id): one more row than `limit`, so
    `paged` can tell whether there is a next page."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            sa.tuple_(table.c.created_at, table.c.id)
            < sa.tuple_(sa.literal(created_at, t.UtcDateTime()), sa.literal(row_id))
        )
    query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)
    async with database.reading() as db:
        return list(await db.execute(query))
