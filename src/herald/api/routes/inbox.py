"""The in-app inbox: pages, unread count, read marks, and a live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from herald.api.deps import Caller, RuntimeDep, require, require_inbox_access
from herald.api.errors import ApiError, not_found
from herald.api.responses import InboxOut, InboxTokenOut, MarkedOut
from herald.api.routing import HeraldRoute
from herald.api.schemas import UserId
from herald.live import STREAM_END
from herald.metrics import METRICS
from herald.providers.inbox import inbox_item_json
from herald.storage import InvalidCursor

router = APIRouter(prefix="/v1/users/{user_id}", tags=["inbox"], route_class=HeraldRoute)
INBOX_TOKEN_TTL = timedelta(hours=12)
KEEPALIVE_SECONDS = 15.0
MISSED_LIMIT = 500  # items replayed to a reconnecting stream, at most
EXPIRED_EVENT = b'event: expired\ndata: {"reason": "inbox token expired"}\n\n'


@router.post("/inbox-token", response_model=InboxTokenOut, dependencies=[require("manage")])
async def inbox_token(user_id: UserId, rt: RuntimeDep) -> dict[str, str]:
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    token, expires_at = rt.signer.inbox_token(user_id, rt.clock.now(), INBOX_TOKEN_TTL)
    return {"token": token, "expires_at": expires_at.isoformat()}


@router.get("/inbox", response_model=InboxOut, dependencies=[require_inbox_access("read")])
async def list_inbox(
    user_id: UserId,
    rt: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    unread_only: bool = False,
) -> dict[str, Any]:
    try:
        page, unread = await rt.storage.inbox.page(user_id, limit, cursor, unread_only)
    except InvalidCursor as error:
        raise ApiError(400, "invalid_cursor", str(error)) from None
    return {
        "items": [inbox_item_json(item) for item in page.items],
        "unread_count": unread,
        "next_cursor": page.next_cursor,
    }


@router.post(
    "/inbox/read-all", response_model=MarkedOut, dependencies=[require_inbox_access("manage")]
)
async def read_all(user_id: UserId, rt: RuntimeDep) -> dict[str, int]:
    return {"marked": await rt.storage.inbox.mark_read(user_id, None)}


@router.post(
    "/inbox/{item_id}/read", status_code=204, dependencies=[require_inbox_access("manage")]
)
async def read_one(user_id: UserId, item_id: str, rt: RuntimeDep) -> Response:
    if not await rt.storage.inbox.has_item(user_id, item_id):
        raise not_found("inbox item")
    await rt.storage.inbox.mark_read(user_id, item_id)
    return Response(status_code=204)


@router.get(
    "/inbox/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def stream(
    user_id: UserId,
    rt: RuntimeDep,
    request: Request,
    caller: Annotated[Caller, require_inbox_access("read")],
) -> StreamingResponse:
    """A `ready` event once subscribed, then one `inbox` event per new item, as it is
    stored; a comment line every 15 s keeps proxies from closing an idle stream. A stream
    opened with an inbox token ends when the token expires, with an `expired` event (the
    client fetches a new token and reconnects); nothing is delivered after that moment."""
    expires_at = caller.expires_at

    def remaining() -> float:
        if expires_at is None:
            return KEEPALIVE_SECONDS
        return (expires_at - rt.clock.now()).total_seconds()

    # What the client saw last: EventSource sends it as Last-Event-ID when it reconnects; a
    # client opening a new stream names it in the URL. The items stored since are sent first.
    last_seen = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    sent: set[str] = set()

    def event(item: dict[str, Any]) -> bytes:
        sent.add(str(item.get("id")))
        return b"id: %s\nevent: inbox\ndata: %s\n\n" % (
            str(item.get("id")).encode(),
            orjson.dumps(item),
        )

    async def events() -> AsyncIterator[bytes]:
        async with rt.hub.subscribe(user_id) as queue:
            METRICS.inbox_streams.inc()
            try:
                # `ready` says the stream is subscribed: what is stored from now on
                # comes through it, so a client that knew no event id reads the newest
                # page once more for what was stored while it connected.
                yield b": connected\nevent: ready\ndata: {}\n\n"
                if last_seen and len(last_seen) <= 64:
                    for missed in await rt.storage.inbox.since(user_id, last_seen, MISSED_LIMIT):
                        yield event(inbox_item_json(missed))
                while not await request.is_disconnected():
                    if remaining() <= 0:
                        yield EXPIRED_EVENT
                        return
                    try:
                        item = await asyncio.wait_for(
                            queue.get(), min(KEEPALIVE_SECONDS, remaining())
                        )
                    except TimeoutError:
                        if remaining() > 0:
                            yield b": keepalive\n\n"
                        continue
                    if item is STREAM_END:
                        return  # the server is stopping
                    if remaining() <= 0:
                        continue  # arrived after the token's end: not delivered
                    if str(item.get("id")) not in sent:  # not already sent as missed
                        yield event(item)
            finally:
                METRICS.inbox_streams.dec()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
