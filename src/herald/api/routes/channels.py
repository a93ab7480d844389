"""A user's webhook, chat (Slack, Teams, Discord) and WhatsApp addresses:
PUT/GET/DELETE /v1/users/{id}/channels/{kind}, GET /v1/users/{id}/channels.

A URL a caller gives is checked here against the deployment's target policy (https, no
loopback, link-local or private address, each address its host resolves to) and again at
send time by the provider's connector."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from herald.api.deps import RuntimeDep, require
from herald.api.errors import ApiError, not_found
from herald.api.responses import ListOut
from herald.api.routing import HeraldRoute
from herald.api.schemas import ChannelAddressIn, ChannelAddressOut, UserId
from herald.config import Settings
from herald.domain import AddressKind, ChannelAddress, mask_target
from herald.providers.caller_http import caller_url_policy
from herald.providers.webhook import signing

router = APIRouter(prefix="/v1/users", tags=["channels"], route_class=HeraldRoute)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "invalid_address", f"{field}: {message}", [{"field": field, "message": message}]
    )


def address_out(address: ChannelAddress, *, secret: str | None = None) -> ChannelAddressOut:
    return ChannelAddressOut(
        kind=address.kind.value,
        channel=address.kind.channel.value,
        target=mask_target(address.kind.channel, address.target),
        active=address.active,
        deactivated_reason=address.deactivated_reason,
        secret=secret,
        created_at=address.created_at,
        updated_at=address.updated_at,
    )


def _only(body: ChannelAddressIn, allowed: set[str]) -> None:
    for name in ("url", "channel", "phone", "secret"):
        if name not in allowed and getattr(body, name) is not None:
            raise invalid(name, "not taken by this kind of address")


async def _checked_url(url: str | None, settings: Settings) -> str:
    if url is None:
        raise invalid("url", "required")
    problem = await caller_url_policy(settings).endpoint_problem(url)
    if problem:
        raise invalid("url", problem)
    return url


async def target_and_config(
    kind: AddressKind, body: ChannelAddressIn, settings: Settings
) -> tuple[str, dict[str, Any]]:
    """The address's target and config, or a 422 naming the field."""
    if kind == AddressKind.WHATSAPP:
        _only(body, {"phone"})
        if body.phone is None:
            raise invalid("phone", "required (E.164, e.g. +14155550100)")
        if not settings.twilio_whatsapp_from:
            raise invalid("phone", "WhatsApp is not configured (HERALD_TWILIO_WHATSAPP_FROM)")
        return body.phone, {}
    if kind == AddressKind.SLACK:
        _only(body, {"url", "channel"})
        if body.channel is not None:
            if body.url is not None:
                raise invalid("channel", "give either url or channel, not both")
            if not settings.slack_bot_token:
                raise invalid("channel", "a channel id needs HERALD_SLACK_BOT_TOKEN; give url")
            return body.channel, {}
        return await _checked_url(body.url, settings), {}
    if kind == AddressKind.WEBHOOK:
        _only(body, {"url", "secret"})
        if body.secret is not None and (problem := signing.secret_problem(body.secret)):
            raise invalid("secret", problem)
        url = await _checked_url(body.url, settings)
        return url, {"secret": body.secret or signing.new_secret()}
    _only(body, {"url"})
    return await _checked_url(body.url, settings), {}


@router.put(
    "/{user_id}/channels/{kind}",
    response_model=ChannelAddressOut,
    response_model_exclude_none=True,
    dependencies=[require("manage")],
)
async def put_address(
    user_id: UserId, kind: AddressKind, body: ChannelAddressIn, rt: RuntimeDep, response: Response
) -> ChannelAddressOut:
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    target, config = await target_and_config(kind, body, rt.settings)
    address, created = await rt.storage.addresses.put(user_id, kind, target, config)
    response.status_code = 201 if created else 200
    return address_out(address, secret=config.get("secret"))


@router.get(
    "/{user_id}/channels/{kind}",
    response_model=ChannelAddressOut,
    response_model_exclude_none=True,
    dependencies=[require("read")],
)
async def get_address(user_id: UserId, kind: AddressKind, rt: RuntimeDep) -> ChannelAddressOut:
    address = await rt.storage.addresses.get(user_id, kind)
    if address is None:
        raise not_found(f"{kind} address")
    return address_out(address)


@router.get(
    "/{user_id}/channels",
    response_model=ListOut[ChannelAddressOut],
    response_model_exclude_none=True,
    dependencies=[require("read")],
)
async def list_addresses(user_id: UserId, rt: RuntimeDep) -> ListOut[ChannelAddressOut]:
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    addresses = await rt.storage.addresses.list(user_id)
    return ListOut[ChannelAddressOut](items=[address_out(a) for a in addresses])


@router.delete("/{user_id}/channels/{kind}", status_code=204, dependencies=[require("manage")])
async def delete_address(user_id: UserId, kind: AddressKind, rt: RuntimeDep) -> Response:
    if not await rt.storage.addresses.delete(user_id, kind):
        raise not_found(f"{kind} address")
    return Response(status_code=204)
