"""Health, readiness, metrics, and the one-click unsubscribe endpoint (RFC 8058)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from herald.api.deps import RuntimeDep, public
from herald.api.errors import ApiError
from herald.api.responses import ReadinessOut, StatusOut, UnsubscribedOut, UnsubscribeLinkOut
from herald.api.routing import HeraldRoute
from herald.domain import Channel
from herald.ops_server import readiness, render_metrics
from herald.security import TokenInvalid

router = APIRouter(tags=["operations"], route_class=HeraldRoute)


@router.get("/healthz", response_model=StatusOut, dependencies=[public()])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadinessOut,
    responses={
        503: {"model": ReadinessOut, "description": "the database or the bus does not answer"}
    },
    dependencies=[public()],
)
async def readyz(rt: RuntimeDep) -> JSONResponse:
    ready, body = await readiness(rt)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    dependencies=[public()],
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(rt: RuntimeDep) -> Response:
    return Response(await render_metrics(rt), media_type=CONTENT_TYPE_LATEST)


async def _unsubscribe(rt: RuntimeDep, token: str) -> dict[str, str]:
    try:
        claims = rt.signer.verify("unsubscribe", token, rt.clock.now())
    except TokenInvalid as error:
        raise ApiError(401, "unauthorized", str(error)) from None
    user_id, category = claims["sub"], str(claims.get("cat", "default"))
    preferences = await rt.storage.directory.get_preferences(user_id)
    if preferences is None:
        raise ApiError(404, "not_found", "user not found")
    preferences.categories.setdefault(category, {})[Channel.EMAIL] = False
    await rt.storage.directory.put_preferences(user_id, preferences)
    return {"status": "unsubscribed", "category": category, "channel": "email"}


Token = Annotated[str, Query(min_length=10, max_length=2000)]


@router.post("/v1/unsubscribe", response_model=UnsubscribedOut, dependencies=[public()])
async def unsubscribe_one_click(rt: RuntimeDep, token: Token) -> dict[str, str]:
    """RFC 8058: mail clients POST `List-Unsubscribe=One-Click` to the header's URL."""
    return await _unsubscribe(rt, token)


@router.get("/v1/unsubscribe", response_model=UnsubscribeLinkOut, dependencies=[public()])
async def unsubscribe_link(rt: RuntimeDep, token: Token) -> dict[str, str]:
    """Checks the link without acting on it: mail scanners follow GET links, so only the
    POST unsubscribes."""
    try:
        claims = rt.signer.verify("unsubscribe", token, rt.clock.now())
    except TokenInvalid as error:
        raise ApiError(401, "unauthorized", str(error)) from None
    return {
        "status": "confirm",
        "category": str(claims.get("cat")),
        "action": "POST this URL to unsubscribe",
    }
