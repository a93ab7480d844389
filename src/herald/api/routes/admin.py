"""Templates, categories, frequency caps, suppressions, API keys and the sandbox outbox."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from herald.api.deps import RuntimeDep, api_keys, require
from herald.api.errors import ApiError, not_found
from herald.api.openapi import updated
from herald.api.responses import (
    CapOut,
    CategoryOut,
    CreatedKeyOut,
    KeyOut,
    ListOut,
    SandboxMessageOut,
    SuppressionOut,
    TemplateOut,
)
from herald.api.routing import HeraldRoute
from herald.api.schemas import CapIn, CategoryIn, KeyIn, Name, SuppressionIn, TemplateIn
from herald.domain import Channel, FrequencyCap
from herald.security import generate_key
from herald.storage import InvalidCursor, Page, Suppression
from herald.templates import Template, TemplateError

router = APIRouter(prefix="/v1", tags=["admin"], route_class=HeraldRoute)
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=500)]


@router.put(
    "/templates/{name}",
    response_model=TemplateOut,
    status_code=201,
    responses=updated(TemplateOut),
    dependencies=[require("manage")],
)
async def put_template(
    name: Name, body: TemplateIn, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    definition = body.model_dump(mode="json", exclude_none=True)
    try:
        Template.from_json(definition).validate()
    except TemplateError as error:
        raise ApiError(
            422,
            "template_error",
            f"template does not compile: {error}",
            [{"field": error.where, "message": error.message}],
        ) from None
    created = await rt.storage.directory.put_template(name, definition)
    response.status_code = 201 if created else 200
    return {"name": name, **definition}


@router.get("/templates/{name}", response_model=TemplateOut, dependencies=[require("read")])
async def get_template(name: Name, rt: RuntimeDep) -> dict[str, Any]:
    definition = await rt.storage.directory.get_template(name)
    if definition is None:
        raise not_found("template")
    return {"name": name, **definition}


@router.delete("/templates/{name}", status_code=204, dependencies=[require("manage")])
async def delete_template(name: Name, rt: RuntimeDep) -> Response:
    if not await rt.storage.directory.delete_template(name):
        raise not_found("template")
    return Response(status_code=204)


@router.get("/templates", response_model=ListOut[TemplateOut], dependencies=[require("read")])
async def list_templates(rt: RuntimeDep) -> dict[str, Any]:
    return {
        "items": [{"name": n, **d} for n, d in await rt.storage.directory.list_templates()],
        "next_cursor": None,
    }


@router.put("/categories/{name}", response_model=CategoryOut, dependencies=[require("manage")])
async def put_category(
    name: Name, body: CategoryIn, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    definition = body.model_dump(mode="json")
    created = await rt.storage.directory.put_category(name, definition)
    response.status_code = 201 if created else 200
    return {"name": name, **definition}


@router.get("/categories/{name}", response_model=CategoryOut, dependencies=[require("read")])
async def get_category(name: Name, rt: RuntimeDep) -> dict[str, Any]:
    definition = await rt.storage.directory.get_category(name)
    if definition is None:
        raise not_found("category")
    return {"name": name, **definition}


@router.get("/categories", response_model=ListOut[CategoryOut], dependencies=[require("read")])
async def list_categories(rt: RuntimeDep) -> dict[str, Any]:
    return {
        "items": [{"name": n, **d} for n, d in await rt.storage.directory.list_categories()],
        "next_cursor": None,
    }


@router.get("/frequency-caps", response_model=ListOut[CapOut], dependencies=[require("read")])
async def list_frequency_caps(rt: RuntimeDep) -> dict[str, Any]:
    caps = await rt.storage.shaping.frequency_caps()
    return {
        "items": [
            {"channel": channel, "limit": cap.limit, "window_seconds": cap.window_seconds}
            for channel, cap in sorted(caps.items())
        ],
        "next_cursor": None,
    }


@router.put("/frequency-caps/{channel}", response_model=CapOut, dependencies=[require("manage")])
async def put_frequency_cap(
    channel: Channel, body: CapIn, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    """Every user's non-critical deliveries on `channel`, across categories."""
    created = await rt.storage.shaping.put_frequency_cap(
        channel, FrequencyCap(body.limit, body.window_seconds)
    )
    response.status_code = 201 if created else 200
    return {"channel": channel, **body.model_dump()}


@router.delete("/frequency-caps/{channel}", status_code=204, dependencies=[require("manage")])
async def delete_frequency_cap(channel: Channel, rt: RuntimeDep) -> Response:
    if not await rt.storage.shaping.delete_frequency_cap(channel):
        raise not_found("frequency cap")
    return Response(status_code=204)


def _suppression(s: Suppression) -> dict[str, Any]:
    return {
        "id": s.id,
        "channel": s.channel,
        "address": s.address,
        "reason": s.reason,
        "created_at": s.created_at,
    }


@router.get("/suppressions", response_model=ListOut[SuppressionOut], dependencies=[require("read")])
async def list_suppressions(
    rt: RuntimeDep,
    channel: Annotated[str | None, Query(pattern="^(email|sms)$")] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    page = await _paged(rt.storage.suppressions.page(channel, address, limit, cursor))
    return {"items": [_suppression(s) for s in page.items], "next_cursor": page.next_cursor}


@router.post(
    "/suppressions",
    response_model=SuppressionOut,
    status_code=201,
    responses=updated(SuppressionOut, "the address was already suppressed"),
    dependencies=[require("manage")],
)
async def add_suppression(
    body: SuppressionIn, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    suppression, created = await rt.storage.suppressions.add(
        body.channel, body.address, body.reason
    )
    response.status_code = 201 if created else 200
    return _suppression(suppression)


@router.delete("/suppressions/{suppression_id}", status_code=204, dependencies=[require("manage")])
async def delete_suppression(suppression_id: str, rt: RuntimeDep) -> Response:
    if not await rt.storage.suppressions.delete(suppression_id):
        raise not_found("suppression")
    return Response(status_code=204)


@router.post(
    "/keys", status_code=201, response_model=CreatedKeyOut, dependencies=[require("admin")]
)
async def create_key(body: KeyIn, rt: RuntimeDep) -> dict[str, Any]:
    key = generate_key()
    record = await rt.storage.keys.create_api_key(
        key.id, key.secret_hash, sorted(set(body.scopes)), body.name
    )
    return {
        "id": record.id,
        "key": key.token,
        "scopes": list(record.scopes),
        "name": record.name,
        "created_at": record.created_at,
    }


@router.get("/keys", response_model=ListOut[KeyOut], dependencies=[require("admin")])
async def list_keys(rt: RuntimeDep) -> dict[str, Any]:
    return {
        "items": [
            {
                "id": k.id,
                "scopes": list(k.scopes),
                "name": k.name,
                "created_at": k.created_at,
                "revoked": k.revoked_at is not None,
            }
            for k in await rt.storage.keys.list_api_keys()
        ],
        "next_cursor": None,
    }


@router.delete("/keys/{key_id}", status_code=204, dependencies=[require("admin")])
async def revoke_key(key_id: str, rt: RuntimeDep, request: Request) -> Response:
    revoked = await rt.storage.keys.revoke_api_key(key_id)
    api_keys(request).forget(key_id)  # at once here; other API processes within the bound
    if not revoked:
        raise not_found("active key")
    return Response(status_code=204)


@router.get(
    "/sandbox/messages",
    response_model=ListOut[SandboxMessageOut],
    dependencies=[require("read")],
)
async def sandbox_messages(
    rt: RuntimeDep,
    channel: Annotated[str | None, Query(pattern="^(push|email|sms|in_app)$")] = None,
    user_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    page = await _paged(rt.storage.sandbox.page(channel, user_id, limit, cursor))
    return {
        "items": [
            {
                "id": m.id,
                "channel": m.channel,
                "provider": m.provider,
                "user_id": m.user_id,
                "delivery_id": m.delivery_id,
                "target": m.target,
                "payload": m.payload,
                "created_at": m.created_at,
                "sends": m.sends,
            }
            for m in page.items
        ],
        "next_cursor": page.next_cursor,
    }


async def _paged(pending: Any) -> Page[Any]:
    try:
        page: Page[Any] = await pending
    except InvalidCursor as error:
        raise ApiError(400, "invalid_cursor", str(error)) from None
    return page
