"""Notifications: accept (single and batch, idempotent), read back with deliveries and log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response
from pydantic import ValidationError

from herald.api.deps import Caller, RuntimeDep, require
from herald.api.errors import ApiError, not_found, validation_details
from herald.api.openapi import errors, updated
from herald.api.responses import BatchOut, CancelledOut, EventsOut
from herald.api.routing import HeraldRoute
from herald.api.schemas import (
    AcceptedOut,
    BatchIn,
    BatchItemIn,
    DeliveryOut,
    EventOut,
    NotificationIn,
    NotificationOut,
    schedule_problem,
)
from herald.domain import Channel, Notification, mask_target
from herald.metrics import METRICS
from herald.providers.apns.payload import APNS_MAX_PAYLOAD_BYTES
from herald.providers.fcm.payload import FCM_MAX_PAYLOAD_BYTES
from herald.providers.push_payloads import check_push_size
from herald.runtime import Runtime
from herald.storage import AcceptResult, NewNotification, new_id
from herald.templates import Template, TemplateError
from herald.util import canonical_hash

router = APIRouter(prefix="/v1/notifications", tags=["notifications"], route_class=HeraldRoute)
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]


STORED_CONTENT = ("title", "body", "data", "template", "variables", "collapse_key", "push")


@dataclass(frozen=True, slots=True)
class _Candidate:
    body: NotificationIn
    key: str
    api_key_id: str  # idempotency keys are each API key's own


def _new_notification(candidate: _Candidate) -> NewNotification:
    body = candidate.body
    content = body.model_dump(mode="json", exclude={"idempotency_key"})
    notification = Notification(
        id=new_id(),
        user_id=body.user_id,
        category=body.category,
        priority=body.priority,
        title=body.title,
        body=body.body,
        data=body.data,
        channels=tuple(body.channels) if body.channels is not None else None,
        ttl_seconds=body.ttl_seconds,
        send_at=body.send_at,
        template=body.template,
        variables=body.variables,
        collapse_key=body.collapse_key,
        push=body.push.model_dump(exclude_none=True) if body.push else {},
        deliver_at_local=body.deliver_at_local,
    )
    content["push"] = notification.push or None
    stored = {
        k: content[k]
        for k in ("title", "body", "data", "template", "variables", "collapse_key", "push")
    }
    return NewNotification(
        notification, candidate.key, canonical_hash(content), stored, candidate.api_key_id
    )


def unknown_user_error(user_id: str) -> ApiError:
    return ApiError(
        422, "unknown_user", f"user {user_id!r} does not exist; PUT /v1/users/{{id}} first"
    )


async def _semantic_errors(rt: Runtime, candidates: Sequence[_Candidate]) -> dict[int, ApiError]:
    """What the schema cannot see: times out of range, templates that do not render for
    the user's locale (or a templated notification's unknown user), a push too big for
    APNs or FCM when the caller asks for push by name or gives rich push options.
    (Otherwise each channel's own limit is the router's, for the channels a notification
    really goes out on.) An unknown user of any other notification is found by the
    accept's insert itself (`_accept`): one statement per request, not two."""
    errors: dict[int, ApiError] = {}
    templates: dict[str, Template | None] = {}
    now = rt.clock.now()
    for index, candidate in enumerate(candidates):
        body = candidate.body
        out_of_range = schedule_problem(body, now)
        if out_of_range:
            errors[index] = time_error(*out_of_range)
            continue
        too_big = push_size_error(body)
        if too_big is not None:
            errors[index] = too_big
            continue
        if body.template is None:
            continue
        user = await rt.storage.directory.get_user(body.user_id)
        if user is None:
            errors[index] = unknown_user_error(body.user_id)
            continue
        if body.template not in templates:
            raw = await rt.storage.directory.get_template(body.template)
            templates[body.template] = Template.from_json(raw) if raw else None
        template = templates[body.template]
        if template is None:
            errors[index] = ApiError(
                422, "unknown_template", f"template {body.template!r} does not exist"
            )
            continue
        try:
            template.render_all(user.locale, body.variables)
        except TemplateError as error:
            errors[index] = ApiError(
                422,
                "template_error",
                f"template {body.template!r} does not render: {error}",
                [{"field": error.where, "message": error.message}],
            )
    return errors


PUSH_LIMITS = (("APNs", "ios", APNS_MAX_PAYLOAD_BYTES), ("FCM", "android", FCM_MAX_PAYLOAD_BYTES))


def push_size_error(body: NotificationIn) -> ApiError | None:
    """A 422 naming the largest part when the push would be over APNs' or FCM's 4 KB."""
    asked = body.push is not None or (body.channels is not None and Channel.PUSH in body.channels)
    if not asked or body.template is not None:
        return None
    rich = body.push.model_dump(exclude_none=True) if body.push else None
    for name, platform, limit in PUSH_LIMITS:
        over = check_push_size(platform, body.title, body.body, body.data, rich)
        if over:
            parts = {"title": body.title, "body": body.body, "data": body.data, "push": rich}
            field = max(parts, key=lambda part: len(orjson.dumps(parts[part])))
            message = (
                f"the {name} payload is {over} bytes over its {limit}-byte limit; "
                f"{field} is the largest part"
            )
            return ApiError(422, "push_too_large", message, [{"field": field, "message": message}])
    return None


def time_error(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}", [{"field": field, "message": message}])


async def _accept(rt: Runtime, candidates: Sequence[_Candidate]) -> list[AcceptResult]:
    results = await rt.storage.notifications.accept([_new_notification(c) for c in candidates])
    created = sum(1 for r in results if r.created)
    METRICS.accepted.inc(created)
    METRICS.replayed.inc(sum(1 for r in results if not r.created and not r.unknown_user))
    if created:
        rt.wake_relay()
    return results


@router.post(
    "",
    status_code=202,
    response_model=AcceptedOut,
    responses={
        **updated(AcceptedOut, "the same Idempotency-Key and body again: the first answer"),
        **errors(409),
    },
)
async def post_notification(
    body: NotificationIn,
    rt: RuntimeDep,
    response: Response,
    caller: Annotated[Caller, require("send")],
    idempotency_key: IdempotencyKey = None,
) -> AcceptedOut:
    assert rt.limits is not None
    rt.limits.check_notifications(caller.key_id, 1)
    candidate = _Candidate(body, idempotency_key or f"auto:{uuid.uuid4()}", caller.key_id or "")
    problem = (await _semantic_errors(rt, [candidate])).get(0)
    if problem:
        raise problem
    (result,) = await _accept(rt, [candidate])
    if result.unknown_user:
        raise unknown_user_error(body.user_id)
    if result.conflict:
        raise ApiError(
            409, "idempotency_conflict", "this Idempotency-Key was used with another body"
        )
    response.status_code = 202 if result.created else 200
    return AcceptedOut(id=result.id)


def _reject(outcome: dict[str, Any], problem: ApiError) -> None:
    """A batch item refused: its outcome carries the error a request of its own would get."""
    outcome.update(
        status="rejected",
        error={"code": problem.code, "message": problem.message, "details": problem.details},
    )


@router.post("/batch", response_model=BatchOut)
async def post_batch(
    body: BatchIn, rt: RuntimeDep, caller: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    """Each item is validated and accepted on its own: one bad item does not refuse the rest."""
    assert rt.limits is not None
    rt.limits.check_notifications(caller.key_id, len(body.notifications))
    outcomes: list[dict[str, Any]] = [{"index": i} for i in range(len(body.notifications))]
    candidates: list[tuple[int, _Candidate]] = []
    for index, raw in enumerate(body.notifications):
        try:
            item = BatchItemIn.model_validate(raw)
        except ValidationError as invalid:
            details = validation_details(invalid.errors())
            _reject(outcomes[index], ApiError(422, "invalid", details[0]["message"], details))
            continue
        outcomes[index]["idempotency_key"] = item.idempotency_key
        candidates.append((index, _Candidate(item, item.idempotency_key, caller.key_id or "")))
    problems = await _semantic_errors(rt, [c for _, c in candidates])
    for position, problem in problems.items():
        _reject(outcomes[candidates[position][0]], problem)
    valid = [(i, c) for position, (i, c) in enumerate(candidates) if position not in problems]
    for (index, candidate), result in zip(
        valid, await _accept(rt, [c for _, c in valid]), strict=True
    ):
        if result.unknown_user:
            _reject(outcomes[index], unknown_user_error(candidate.body.user_id))
        elif result.conflict:
            _reject(
                outcomes[index],
                ApiError(
                    409, "idempotency_conflict", "this idempotency_key was used with another body"
                ),
            )
        else:
            outcomes[index].update(
                id=result.id, status="accepted" if result.created else "duplicate"
            )
    counts = {
        s: sum(1 for o in outcomes if o.get("status") == s)
        for s in ("accepted", "duplicate", "rejected")
    }
    return {"items": outcomes, **counts}


@router.get("/{notification_id}", response_model=NotificationOut, dependencies=[require("read")])
async def get_notification(notification_id: str, rt: RuntimeDep) -> NotificationOut:
    notification = await rt.storage.notifications.get(notification_id)
    if notification is None:
        raise not_found("notification")
    deliveries = await rt.storage.notifications.deliveries_of(notification_id)
    engaged = await rt.storage.engagement.of_notification(notification_id)
    return NotificationOut(
        id=notification.id,
        user_id=notification.user_id,
        category=notification.category,
        priority=notification.priority.value,
        title=notification.title,
        body=notification.body,
        data=notification.data,
        channels=[c.value for c in notification.channels] if notification.channels else None,
        ttl_seconds=notification.ttl_seconds,
        send_at=notification.send_at,
        template=notification.template,
        status=notification.state.value,
        created_at=notification.created_at,
        workflow_run_id=notification.workflow_run_id,
        workflow_step=notification.workflow_step,
        deliveries=[
            DeliveryOut(
                id=d.id,
                channel=d.channel.value,
                provider=d.provider,
                target=mask_target(d.channel, d.target),
                status=d.state.value,
                attempts=d.attempts,
                provider_message_id=d.provider_message_id,
                last_error=d.last_error,
                due_at=d.due_at,
                updated_at=d.updated_at,
                **{f"{k.value}_at": at for k, at in engaged.get(d.id, {}).items()},
            )
            for d in deliveries
        ],
    )


@router.post(
    "/{notification_id}/cancel", response_model=CancelledOut, dependencies=[require("send")]
)
async def cancel_notification(notification_id: str, rt: RuntimeDep) -> dict[str, Any]:
    """Cancel what has not gone out yet (scheduled, deferred or still queued deliveries)."""
    notification = await rt.storage.notifications.get(notification_id)
    if notification is None:
        raise not_found("notification")
    cancelled = await rt.storage.notifications.cancel([notification_id])
    remaining = await rt.storage.notifications.deliveries_of(notification_id)
    if not cancelled and notification.state.value != "accepted" and remaining:
        states = sorted({d.state.value for d in remaining})
        raise ApiError(
            409, "not_cancellable", f"nothing left to cancel (deliveries are {', '.join(states)})"
        )
    return {"id": notification_id, "status": "cancelled", "deliveries_cancelled": cancelled}


@router.get("/{notification_id}/events", response_model=EventsOut, dependencies=[require("read")])
async def get_events(notification_id: str, rt: RuntimeDep) -> dict[str, Any]:
    if await rt.storage.notifications.get(notification_id) is None:
        raise not_found("notification")
    events = await rt.storage.notifications.events_of(notification_id)
    channels = await rt.storage.activity.channels_of(notification_id)
    return {
        "items": [
            EventOut(
                delivery_id=e.delivery_id,
                channel=channels.get(e.delivery_id),
                status=e.state.value,
                provider=e.provider,
                detail=e.detail,
                at=e.at,
            )
            for e in events
        ],
        "next_cursor": None,
    }
