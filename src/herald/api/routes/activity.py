"""The activity API: list and search what Herald did (notifications, users, broadcasts,
topics, deliveries), and the dead-letter queue with its replay. Every list is keyset-paged:
pass the `next_cursor` of a page as `cursor` for the next one (null: that was the last)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from herald.api.deps import RuntimeDep, require
from herald.api.errors import ApiError, not_found
from herald.api.routing import HeraldRoute
from herald.domain import Channel, Delivery, DeliveryState, mask_target
from herald.runtime import Runtime
from herald.storage import InvalidCursor
from herald.storage.activity import NotificationFilter
from herald.storage.records import Page

router = APIRouter(prefix="/v1", tags=["activity"], route_class=HeraldRoute)
REPLAY_REASON = "replayed from the dead-letter queue"
REPLAY_ALL_LIMIT = 1000

Limit = Annotated[int, Query(ge=1, le=500, description="rows per page")]
Cursor = Annotated[
    str | None, Query(max_length=500, description="the `next_cursor` of the previous page")
]
T = TypeVar("T")


def _examples(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


def _responses(example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": example}}}}


_AT = "2026-12-01T12:00:00Z"
_DELIVERY_BRIEF = {"id": "5f0c…", "channel": "push", "status": "sent", "provider": "apns"}
_NOTIFICATIONS_EXAMPLE = {
    "items": [
        {
            "id": "01J…",
            "user_id": "42",
            "category": "billing",
            "priority": "normal",
            "status": "routed",
            "title": "Payment received",
            "created_at": _AT,
            "broadcast_id": None,
            "deliveries": [_DELIVERY_BRIEF],
        }
    ],
    "next_cursor": "WyIyMDI2LTEyLTAxVDEyOjAwOjAwKzAwOjAwIiwiMDFKIl0",
}
_USERS_EXAMPLE = {
    "items": [
        {
            "id": "42",
            "email": "ada@example.com",
            "phone": "+14155550100",
            "timezone": "Europe/Berlin",
            "locale": "en",
            "created_at": _AT,
        }
    ],
    "next_cursor": None,
}
_BROADCASTS_EXAMPLE = {
    "items": [
        {
            "id": "01J…",
            "topic": "breaking-news",
            "state": "fanned_out",
            "planned": 1234,
            "title": "Storm warning",
            "created_at": _AT,
            "updated_at": _AT,
        }
    ],
    "next_cursor": None,
}
_TOPICS_EXAMPLE = {"items": [{"name": "breaking-news", "subscribers": 1234}], "next_cursor": None}
_DELIVERY_EXAMPLE = {
    "id": "5f0c…",
    "notification_id": "01J…",
    "user_id": "42",
    "channel": "email",
    "category": "billing",
    "provider": "ses",
    "target": "a***@example.com",
    "status": "failed",
    "attempts": 5,
    "provider_message_id": None,
    "last_error": "dead-lettered after 5 attempts: 503 from provider",
    "due_at": None,
    "created_at": _AT,
    "updated_at": _AT,
    "events": [
        {
            "delivery_id": "5f0c…",
            "channel": "email",
            "status": "failed",
            "provider": "ses",
            "detail": {"dead_lettered": True},
            "at": _AT,
        }
    ],
}
_REPLAY_EXAMPLE = {"id": "5f0c…", "replayed": True, "status": "queued"}


class DeliveryBriefOut(BaseModel):
    id: str
    channel: str
    status: str
    provider: str | None


class NotificationSummaryOut(BaseModel):
    id: str
    user_id: str
    category: str
    priority: str
    status: str
    title: str | None
    created_at: datetime
    broadcast_id: str | None
    deliveries: list[DeliveryBriefOut]


class NotificationPage(BaseModel):
    model_config = _examples(_NOTIFICATIONS_EXAMPLE)
    items: list[NotificationSummaryOut]
    next_cursor: str | None


class UserSummaryOut(BaseModel):
    id: str
    email: str | None
    phone: str | None
    timezone: str
    locale: str
    created_at: datetime


class UserPage(BaseModel):
    model_config = _examples(_USERS_EXAMPLE)
    items: list[UserSummaryOut]
    next_cursor: str | None


class BroadcastSummaryOut(BaseModel):
    id: str
    topic: str | None
    state: str
    planned: int
    title: str | None
    created_at: datetime
    updated_at: datetime


class BroadcastPage(BaseModel):
    model_config = _examples(_BROADCASTS_EXAMPLE)
    items: list[BroadcastSummaryOut]
    next_cursor: str | None


class TopicOut(BaseModel):
    name: str
    subscribers: int


class TopicPage(BaseModel):
    model_config = _examples(_TOPICS_EXAMPLE)
    items: list[TopicOut]
    next_cursor: str | None


class DeliveryEventOut(BaseModel):
    delivery_id: str
    channel: str
    status: str
    provider: str | None
    detail: dict[str, Any]
    at: datetime


class DeliveryDetailOut(BaseModel):
    model_config = _examples(_DELIVERY_EXAMPLE)
    id: str
    notification_id: str
    user_id: str
    channel: str
    category: str
    provider: str | None
    target: str
    status: str
    attempts: int
    provider_message_id: str | None
    last_error: str | None
    due_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    events: list[DeliveryEventOut] = []


class DeadLetterPage(BaseModel):
    model_config = _examples({"items": [_DELIVERY_EXAMPLE], "next_cursor": None})
    items: list[DeliveryDetailOut]
    next_cursor: str | None


class ReplayOut(BaseModel):
    model_config = _examples(_REPLAY_EXAMPLE)
    id: str
    replayed: bool
    status: str


class ReplayAllOut(BaseModel):
    model_config = _examples({"replayed": 3, "items": [_REPLAY_EXAMPLE]})
    replayed: int
    items: list[ReplayOut]


async def _page(call: Any) -> Page[Any]:
    try:
        result: Page[Any] = await call
    except InvalidCursor as error:
        raise ApiError(400, "invalid_cursor", str(error)) from None
    return result


def delivery_out(delivery: Delivery, events: list[Any] | None = None) -> DeliveryDetailOut:
    return DeliveryDetailOut(
        id=delivery.id,
        notification_id=delivery.notification_id,
        user_id=delivery.user_id,
        channel=delivery.channel.value,
        category=delivery.category,
        provider=delivery.provider,
        target=mask_target(delivery.channel, delivery.target),
        status=delivery.state.value,
        attempts=delivery.attempts,
        provider_message_id=delivery.provider_message_id,
        last_error=delivery.last_error,
        due_at=delivery.due_at,
        created_at=delivery.created_at,
        updated_at=delivery.updated_at,
        events=[
            DeliveryEventOut(
                delivery_id=e.delivery_id,
                channel=delivery.channel.value,
                status=e.state.value,
                provider=e.provider,
                detail=e.detail,
                at=e.at,
            )
            for e in events or []
        ],
    )


@router.get(
    "/notifications",
    response_model=NotificationPage,
    summary="Search notifications",
    responses=_responses(_NOTIFICATIONS_EXAMPLE),
    dependencies=[require("read")],
)
async def list_notifications(
    rt: RuntimeDep,
    user_id: Annotated[str | None, Query(max_length=128)] = None,
    category: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[
        DeliveryState | None, Query(description="a state any of its deliveries is in")
    ] = None,
    channel: Annotated[Channel | None, Query(description="has a delivery on this channel")] = None,
    provider: Annotated[
        str | None, Query(max_length=32, description="has a delivery through this provider")
    ] = None,
    since: Annotated[datetime | None, Query(description="created at or after")] = None,
    until: Annotated[datetime | None, Query(description="created before")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    """Newest first. `status`, `channel` and `provider` match any of a notification's
    deliveries; each item lists its deliveries (channel, status, provider)."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ApiError(
                422,
                "invalid",
                f"{name}: give a time zone (e.g. 2026-12-01T12:00:00Z)",
                [{"field": name, "message": "a time without a time zone"}],
            )
    where = NotificationFilter(
        user_id=user_id,
        category=category,
        status=status.value if status else None,
        channel=channel.value if channel else None,
        provider=provider,
        since=since,
        until=until,
    )
    page = await _page(rt.storage.activity.notifications(where, limit, cursor))
    return NotificationPage(
        items=[
            NotificationSummaryOut(
                id=n.id,
                user_id=n.user_id,
                category=n.category,
                priority=n.priority,
                status=n.state,
                title=n.title,
                created_at=n.created_at,
                broadcast_id=n.broadcast_id,
                deliveries=[
                    DeliveryBriefOut(
                        id=d.id, channel=d.channel, status=d.state, provider=d.provider
                    )
                    for d in n.deliveries
                ],
            )
            for n in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/users",
    response_model=UserPage,
    summary="List users",
    responses=_responses(_USERS_EXAMPLE),
    dependencies=[require("read")],
)
async def list_users(
    rt: RuntimeDep,
    query: Annotated[
        str | None, Query(max_length=320, description="start of the user id or email")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> UserPage:
    """By user id; `query` keeps those whose id or email starts with it."""
    page = await _page(rt.storage.activity.users(query, limit, cursor))
    return UserPage(
        items=[UserSummaryOut(**vars_of(u)) for u in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/broadcasts",
    response_model=BroadcastPage,
    summary="List broadcasts",
    responses=_responses(_BROADCASTS_EXAMPLE),
    dependencies=[require("read")],
)
async def list_broadcasts(
    rt: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> BroadcastPage:
    """Newest first; GET /v1/broadcasts/{id} has one's progress."""
    page = await _page(rt.storage.activity.broadcasts(limit, cursor))
    return BroadcastPage(
        items=[BroadcastSummaryOut(**vars_of(b)) for b in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/topics",
    response_model=TopicPage,
    summary="List topics",
    responses=_responses(_TOPICS_EXAMPLE),
    dependencies=[require("read")],
)
async def list_topics(rt: RuntimeDep, limit: Limit = 50, cursor: Cursor = None) -> TopicPage:
    """Every topic someone subscribes to, by name, with its number of subscribers."""
    page = await _page(rt.storage.activity.topics(limit, cursor))
    return TopicPage(
        items=[TopicOut(name=x.name, subscribers=x.subscribers) for x in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetailOut,
    summary="Get a delivery and its log",
    responses=_responses(_DELIVERY_EXAMPLE),
    dependencies=[require("read")],
)
async def get_delivery(delivery_id: str, rt: RuntimeDep) -> DeliveryDetailOut:
    """One copy of a notification on one channel to one target, with its log entries."""
    found = await rt.storage.activity.delivery(delivery_id)
    if found is None:
        raise not_found("delivery")
    return delivery_out(*found)


@router.get(
    "/dead-letters",
    response_model=DeadLetterPage,
    summary="List the dead-letter queue",
    responses=_responses({"items": [_DELIVERY_EXAMPLE], "next_cursor": None}),
    dependencies=[require("read")],
)
async def list_dead_letters(
    rt: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> DeadLetterPage:
    """Deliveries that failed for good (retries used up, expired, set aside), most recent
    first; `last_error` says why."""
    page = await _page(rt.storage.activity.dead_letters(limit, cursor))
    return DeadLetterPage(items=[delivery_out(d) for d in page.items], next_cursor=page.next_cursor)


async def replay(rt: Runtime, delivery_ids: list[str]) -> list[ReplayOut]:
    results = await rt.storage.activity.replay(delivery_ids, REPLAY_REASON)
    if any(r.replayed for r in results):
        rt.wake_relay()
    return [ReplayOut(id=r.delivery_id, replayed=r.replayed, status=r.state) for r in results]


@router.post(
    "/dead-letters/{delivery_id}/replay",
    response_model=ReplayOut,
    status_code=202,
    summary="Replay a dead letter",
    responses={
        202: {"content": {"application/json": {"example": _REPLAY_EXAMPLE}}},
        200: {
            "model": ReplayOut,
            "description": "already replayed (or not failed): nothing changed",
            "content": {"application/json": {"example": {**_REPLAY_EXAMPLE, "replayed": False}}},
        },
    },
    dependencies=[require("manage")],
)
async def replay_one(delivery_id: str, rt: RuntimeDep, response: Response) -> ReplayOut:
    """Queues the delivery again with a fresh retry budget (202). Idempotent: a delivery
    that is no longer failed (replayed already) is left alone and the answer is 200 with
    `replayed: false` and its current status."""
    results = await replay(rt, [delivery_id])
    if not results:
        raise not_found("delivery")
    if not results[0].replayed:
        response.status_code = 200
    return results[0]


@router.post(
    "/dead-letters/replay",
    response_model=ReplayAllOut,
    summary="Replay the whole dead-letter queue",
    responses=_responses({"replayed": 1, "items": [_REPLAY_EXAMPLE]}),
    dependencies=[require("manage")],
)
async def replay_all(rt: RuntimeDep) -> ReplayAllOut:
    """Replays up to 1,000 dead letters, oldest first (call again for more)."""
    items = await replay(rt, await rt.storage.activity.failed_ids(REPLAY_ALL_LIMIT))
    return ReplayAllOut(replayed=sum(1 for i in items if i.replayed), items=items)


def vars_of(item: Any) -> dict[str, Any]:
    return {name: getattr(item, name) for name in item.__slots__}
