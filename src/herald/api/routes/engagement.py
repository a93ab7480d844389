"""Engagement: the app's reports (opened, clicked, dismissed) and the email open pixel and
click redirects. Each first report of a kind is kept on the delivery and logged; repeats
change nothing."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from fastapi.responses import RedirectResponse

from herald.api.deps import Caller, RuntimeDep, public, require_inbox_access
from herald.api.errors import ApiError, not_found
from herald.api.openapi import errors
from herald.api.responses import EngagementOut
from herald.api.routing import HeraldRoute
from herald.api.schemas import Strict
from herald.domain.engagement import Engagement
from herald.runtime import Runtime
from herald.security import TokenInvalid

router = APIRouter(tags=["engagement"], route_class=HeraldRoute)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
DeliveryId = Annotated[str, Path(min_length=1, max_length=64)]
Token = Annotated[str, Path(min_length=10, max_length=8000)]


class EngagementIn(Strict):
    event: Literal["opened", "clicked", "dismissed"]


@router.post("/v1/deliveries/{delivery_id}/engagement", response_model=EngagementOut)
async def report_engagement(
    delivery_id: DeliveryId,
    body: EngagementIn,
    rt: RuntimeDep,
    caller: Annotated[Caller, require_inbox_access("send")],
) -> dict[str, Any]:
    """What the user did with a push (or any delivery): an API key, or that user's own
    inbox token. The first report of each kind counts; a repeat is 200 and changes
    nothing (`first`: false)."""
    owner = await rt.storage.engagement.owner(delivery_id)
    if owner is None:
        raise not_found("delivery")
    if caller.inbox_user is not None and caller.inbox_user != owner.user_id:
        raise ApiError(403, "forbidden", "this delivery belongs to another user")
    kind = Engagement(body.event)
    first = await rt.storage.engagement.report(delivery_id, kind, {"source": "app"})
    return {"delivery_id": delivery_id, "event": kind.value, "first": first}


@router.get(
    "/v1/track/open/{token}.gif",
    dependencies=[public()],
    response_class=Response,
    responses={
        200: {
            "description": "a 1x1 transparent GIF",
            "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(404),
    },
)
async def open_pixel(token: Token, rt: RuntimeDep) -> Response:
    """The email's open pixel: records `opened` (once) and answers a 1x1 GIF."""
    delivery_id = _verified(rt, "track-open", token)["sub"]
    await rt.storage.engagement.report(delivery_id, Engagement.OPENED, {"source": "pixel"})
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


@router.get(
    "/v1/track/click/{token}",
    dependencies=[public()],
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {
            "description": "to the URL signed into the link",
            "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
        },
        **errors(400, 404),
    },
)
async def click_redirect(token: Token, rt: RuntimeDep) -> RedirectResponse:
    """A tracked link: records `clicked` (once) and redirects to the URL signed into the
    token, and only there."""
    claims = _verified(rt, "track-click", token)
    url = claims.get("url")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise ApiError(400, "invalid_link", "this link has no destination")
    await rt.storage.engagement.report(claims["sub"], Engagement.CLICKED, {"url": url[:2000]})
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


def _verified(rt: Runtime, purpose: str, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = rt.signer.verify(purpose, token, rt.clock.now())
    except TokenInvalid as error:
        raise ApiError(404, "invalid_link", f"this tracking link is not valid ({error})") from None
    return claims
