"""Users, their preferences and their devices."""

from __future__ import annotations

from fastapi import APIRouter, Response

from herald.api.deps import RuntimeDep, require
from herald.api.errors import ApiError, not_found
from herald.api.openapi import updated
from herald.api.responses import DevicesOut, DigestOut, ListOut
from herald.api.routing import HeraldRoute
from herald.api.schemas import (
    DeviceIn,
    DeviceOut,
    Identifier,
    PreferencesIn,
    PreferencesOut,
    UserId,
    UserIn,
    UserOut,
)
from herald.domain import (
    ALL_CHANNELS,
    Device,
    Platform,
    Preferences,
    QuietHours,
    User,
    parse_wall_time,
)
from herald.storage.rows import preferences_to_json

router = APIRouter(prefix="/v1/users", tags=["users"], route_class=HeraldRoute)


def user_out(user: User) -> UserOut:
    assert user.created_at is not None
    assert user.updated_at is not None
    return UserOut(
        id=user.id,
        email=user.email,
        phone=user.phone,
        timezone=user.timezone,
        locale=user.locale,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


def device_out(device: Device) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        platform=device.platform.value,
        active=device.active,
        deactivated_reason=device.deactivated_reason,
        created_at=device.created_at,
    )


@router.put(
    "/{user_id}",
    response_model=UserOut,
    status_code=201,
    responses=updated(UserOut),
    dependencies=[require("manage")],
)
async def put_user(user_id: UserId, body: UserIn, rt: RuntimeDep, response: Response) -> UserOut:
    user, created = await rt.storage.directory.upsert_user(
        User(
            id=user_id,
            email=body.email,
            phone=body.phone,
            timezone=body.timezone,
            locale=body.locale,
        )
    )
    response.status_code = 201 if created else 200
    return user_out(user)


@router.get("/{user_id}", response_model=UserOut, dependencies=[require("read")])
async def get_user(user_id: UserId, rt: RuntimeDep) -> UserOut:
    user = await rt.storage.directory.get_user(user_id)
    if user is None:
        raise not_found("user")
    return user_out(user)


@router.delete("/{user_id}", status_code=204, dependencies=[require("manage")])
async def delete_user(user_id: UserId, rt: RuntimeDep) -> Response:
    if not await rt.storage.directory.delete_user(user_id):
        raise not_found("user")
    return Response(status_code=204)


def preferences_out(preferences: Preferences) -> PreferencesOut:
    raw = preferences_to_json(preferences)
    raw["channels"] = {c.value: preferences.channel_enabled(c) for c in ALL_CHANNELS}
    return PreferencesOut.model_validate(raw)


@router.get("/{user_id}/preferences", response_model=PreferencesOut, dependencies=[require("read")])
async def get_preferences(user_id: UserId, rt: RuntimeDep) -> PreferencesOut:
    preferences = await rt.storage.directory.get_preferences(user_id)
    if preferences is None:
        raise not_found("user")
    return preferences_out(preferences)


@router.put(
    "/{user_id}/preferences", response_model=PreferencesOut, dependencies=[require("manage")]
)
async def put_preferences(user_id: UserId, body: PreferencesIn, rt: RuntimeDep) -> PreferencesOut:
    quiet = (
        QuietHours(parse_wall_time(body.quiet_hours.start), parse_wall_time(body.quiet_hours.end))
        if body.quiet_hours
        else None
    )
    preferences = Preferences(
        channels=dict(body.channels), categories=dict(body.categories), quiet_hours=quiet
    )
    if not await rt.storage.directory.put_preferences(user_id, preferences):
        raise not_found("user")
    return preferences_out(preferences)


@router.post(
    "/{user_id}/devices",
    response_model=DeviceOut,
    status_code=201,
    responses=updated(DeviceOut, "the same token again: the device already registered"),
    dependencies=[require("manage")],
)
async def add_device(
    user_id: UserId, body: DeviceIn, rt: RuntimeDep, response: Response
) -> DeviceOut:
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    problem = validate_device(body)
    if problem:
        raise ApiError(422, "invalid_device", problem, [{"field": "token", "message": problem}])
    if body.subscription is not None:
        from herald.providers.targets import refused_push_endpoint

        refused = await refused_push_endpoint(body.subscription.endpoint, rt.settings)
        if refused:
            detail = [{"field": "subscription.endpoint", "message": refused}]
            raise ApiError(422, "invalid_device", f"subscription.endpoint: {refused}", detail)
    subscription = body.subscription.model_dump(exclude_none=True) if body.subscription else None
    token = body.subscription.endpoint if body.subscription else body.token
    assert token is not None
    device, created = await rt.storage.directory.register_device(
        user_id, body.platform, token, subscription
    )
    response.status_code = 201 if created else 200
    return device_out(device)


def validate_device(body: DeviceIn) -> str | None:
    """Per-platform token checks (APNs hex, FCM token shape, Web Push endpoint and keys)."""
    try:
        from herald.providers.push_payloads import validate_push_device
    except ImportError:  # pragma: no cover - the push module is optional at import time
        return None
    subscription = body.subscription.model_dump() if body.subscription else None
    return validate_push_device(body.platform.value, body.token, subscription)


@router.get("/{user_id}/devices", response_model=DevicesOut, dependencies=[require("read")])
async def list_devices(user_id: UserId, rt: RuntimeDep) -> dict[str, object]:
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    devices = await rt.storage.directory.list_devices(user_id)
    return {"items": [device_out(d) for d in devices], "next_cursor": None}


@router.delete("/{user_id}/devices/{device_id}", status_code=204, dependencies=[require("manage")])
async def delete_device(user_id: UserId, device_id: Identifier, rt: RuntimeDep) -> Response:
    if not await rt.storage.directory.delete_device(user_id, device_id):
        raise not_found("device")
    return Response(status_code=204)


@router.get("/{user_id}/digests", response_model=ListOut[DigestOut], dependencies=[require("read")])
async def list_digests(user_id: UserId, rt: RuntimeDep) -> dict[str, object]:
    """The user's digest windows: open ones collect items until `window_end`; a closed one
    names the notification it became."""
    if await rt.storage.directory.get_user(user_id) is None:
        raise not_found("user")
    return {"items": await rt.storage.shaping.list_digests(user_id), "next_cursor": None}


__all__ = ["Platform", "router"]
