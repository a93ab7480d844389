"""Topics and broadcasts: one notification to every subscriber of a topic, or to an
explicit list of users, fanned out in pages through the bus."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from herald.api.deps import Caller, RuntimeDep, require
from herald.api.errors import ApiError, not_found
from herald.api.openapi import errors, updated
from herald.api.responses import (
    BroadcastAcceptedOut,
    BroadcastCancelledOut,
    BroadcastOut,
    ListOut,
    SubscriberOut,
    SubscriptionOut,
    TopicOut,
)
from herald.api.routes.notifications import time_error
from herald.api.routing import HeraldRoute
from herald.api.schemas import BroadcastIn, Name, UserId, schedule_problem
from herald.router.fanout import page_record
from herald.storage import new_id
from herald.util import canonical_hash

router = APIRouter(prefix="/v1", tags=["broadcasts"], route_class=HeraldRoute)
RequiredKey = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=255)]


@router.put(
    "/users/{user_id}/topics/{topic}",
    response_model=SubscriptionOut,
    dependencies=[require("manage")],
)
async def subscribe(
    user_id: UserId, topic: Name, rt: RuntimeDep, response: Response
) -> dict[str, str]:
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    response.status_code = 201 if await rt.storage.broadcasts.subscribe(topic, user_id) else 200
    return {"user_id": user_id, "topic": topic}


@router.delete("/users/{user_id}/topics/{topic}", status_code=204, dependencies=[require("manage")])
async def unsubscribe(user_id: UserId, topic: Name, rt: RuntimeDep) -> Response:
    if not await rt.storage.broadcasts.unsubscribe(topic, user_id):
        raise not_found("subscription")
    return Response(status_code=204)


@router.get(
    "/users/{user_id}/topics", response_model=ListOut[TopicOut], dependencies=[require("read")]
)
async def user_topics(user_id: UserId, rt: RuntimeDep) -> dict[str, Any]:
    return {
        "items": [{"topic": t} for t in await rt.storage.broadcasts.user_topics(user_id)],
        "next_cursor": None,
    }


@router.get(
    "/topics/{topic}/subscribers",
    response_model=ListOut[SubscriberOut],
    dependencies=[require("read")],
)
async def subscribers(
    topic: Name, rt: RuntimeDep, limit: int = 100, cursor: str | None = None
) -> dict[str, Any]:
    """Subscribers in user id order (this list is oldest-id first, not newest first)."""
    if not 1 <= limit <= 1000:
        raise ApiError(422, "invalid", "limit must be between 1 and 1000")
    users = await rt.storage.broadcasts.audience_page(
        topic=topic, broadcast_id=None, after=cursor, limit=limit
    )
    return {
        "items": [{"user_id": u} for u in users],
        "next_cursor": users[-1] if len(users) == limit else None,
    }


@router.post(
    "/broadcasts",
    status_code=202,
    response_model=BroadcastAcceptedOut,
    responses={
        **updated(BroadcastAcceptedOut, "the same Idempotency-Key and body again"),
        **errors(409),
    },
)
async def create_broadcast(
    body: BroadcastIn,
    rt: RuntimeDep,
    response: Response,
    caller: Annotated[Caller, require("send")],
    idempotency_key: RequiredKey,
) -> dict[str, Any]:
    out_of_range = schedule_problem(body.notification, rt.clock.now())
    if out_of_range:
        field, message = out_of_range
        raise time_error(f"notification.{field}", message)
    content = body.notification.model_dump(mode="json")
    request_hash = canonical_hash(
        {"topic": body.topic, "user_ids": body.user_ids, "notification": content}
    )
    broadcast_id = new_id()
    found, created, conflict = await rt.storage.broadcasts.create_broadcast(
        broadcast_id=broadcast_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        api_key_id=caller.key_id or "",
        topic=body.topic,
        user_ids=body.user_ids,
        template=content,
        first_page=_first_page(broadcast_id),
    )
    if conflict:
        raise ApiError(
            409, "idempotency_conflict", "this Idempotency-Key was used with another body"
        )
    if created:
        rt.wake_relay()
    response.status_code = 202 if created else 200
    broadcast = await rt.storage.broadcasts.get_broadcast(found)
    assert broadcast is not None
    return {"id": found, "status": "accepted", "planned": broadcast["planned"]}


def _first_page(broadcast_id: str) -> tuple[str, str, bytes]:
    record = page_record(broadcast_id, None)
    return record.topic, record.key, record.value


@router.get(
    "/broadcasts/{broadcast_id}", response_model=BroadcastOut, dependencies=[require("read")]
)
async def get_broadcast(broadcast_id: str, rt: RuntimeDep) -> dict[str, Any]:
    broadcast = await rt.storage.broadcasts.get_broadcast(broadcast_id)
    if broadcast is None:
        raise not_found("broadcast")
    progress = await rt.storage.broadcasts.broadcast_progress(broadcast_id)
    return {
        "id": broadcast_id,
        "topic": broadcast["topic"],
        "state": broadcast["state"],
        "planned": broadcast["planned"],
        "created_at": broadcast["created_at"],
        **progress,
    }


@router.post(
    "/broadcasts/{broadcast_id}/cancel",
    response_model=BroadcastCancelledOut,
    dependencies=[require("send")],
)
async def cancel_broadcast(broadcast_id: str, rt: RuntimeDep) -> dict[str, Any]:
    """Stops the fan-out and everything not yet sent; what went out stays sent."""
    if await rt.storage.broadcasts.get_broadcast(broadcast_id) is None:
        raise not_found("broadcast")
    await rt.storage.broadcasts.set_broadcast_state(broadcast_id, "cancelled")
    cancelled = await rt.storage.notifications.cancel(broadcast_id=broadcast_id)
    return {"id": broadcast_id, "state": "cancelled", "deliveries_cancelled": cancelled}
