"""Turn one notification into its deliveries: channels by preference, targets by device and
address, content by template. Pure: no I/O, so it is tested directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from herald.domain import (
    Channel,
    ChannelDecision,
    Delivery,
    DeliveryState,
    Priority,
    Verdict,
    decide_channels,
    delivery_id,
    next_occurrence,
    parse_wall_time,
)
from herald.storage.records import RoutingInput
from herald.templates import Template, TemplateError

NO_TARGET = "-"
UnsubscribeUrl = Callable[[str, str], str]  # (user id, category) -> URL


@dataclass(frozen=True, slots=True)
class _Target:
    target: str
    ref: str
    platform: str | None = None
    subscription: dict[str, Any] | None = None


def plan_deliveries(
    routing: RoutingInput, now: datetime, unsubscribe_url: UnsubscribeUrl | None = None
) -> list[Delivery]:
    notification = routing.notification
    user = routing.user
    if user is None:
        return []
    zone = _zone(user.timezone)
    send_at = notification.send_at
    if notification.deliver_at_local:
        send_at = next_occurrence(
            parse_wall_time(notification.deliver_at_local), zone, max(now, send_at or now)
        )
    decisions = decide_channels(
        requested=notification.channels,
        category=routing.category,
        preferences=routing.preferences,
        priority=notification.priority,
        zone=zone,
        now=now,
        send_at=send_at,
    )
    created = notification.created_at or now
    expires_at = (
        created + timedelta(seconds=notification.ttl_seconds) if notification.ttl_seconds else None
    )
    deliveries: list[Delivery] = []
    for decision in decisions:
        deliveries.extend(_channel_deliveries(routing, decision, expires_at, unsubscribe_url))
    return deliveries


def _channel_deliveries(
    routing: RoutingInput,
    decision: ChannelDecision,
    expires_at: datetime | None,
    unsubscribe_url: UnsubscribeUrl | None,
) -> list[Delivery]:
    channel = decision.channel
    notification = routing.notification
    skip_reason = decision.reason if decision.verdict == Verdict.SKIP else None
    payload: dict[str, Any] = {}
    if skip_reason is None:
        try:
            payload = _content(routing, channel)
        except TemplateError as error:
            skip_reason = f"template did not render: {error}"
        if skip_reason is None and not payload:
            skip_reason = f"nothing to send on {channel}"
    targets = _targets(routing, channel)
    if skip_reason is None and not targets:
        skip_reason = _no_target_reason(channel)
    if (
        skip_reason is None
        and channel == Channel.EMAIL
        and unsubscribe_url is not None
        and notification.priority != Priority.CRITICAL
    ):
        payload["unsubscribe_url"] = unsubscribe_url(notification.user_id, notification.category)
    if skip_reason is not None:
        targets = [_Target("", NO_TARGET)]
    suppressed = routing.suppressed
    return [
        _delivery(
            routing,
            channel,
            target,
            payload,
            _state_and_reason(decision, skip_reason, (channel.value, target.target) in suppressed),
            expires_at,
        )
        for target in targets
    ]


def _state_and_reason(
    decision: ChannelDecision, skip_reason: str | None, suppressed: bool
) -> tuple[DeliveryState, str | None, datetime | None]:
    if skip_reason is not None:
        return DeliveryState.SKIPPED, skip_reason, None
    if suppressed:
        return DeliveryState.SKIPPED, "address is suppressed", None
    if decision.verdict == Verdict.DEFER:
        return DeliveryState.DEFERRED, decision.reason, decision.not_before
    return DeliveryState.QUEUED, None, None


def _delivery(
    routing: RoutingInput,
    channel: Channel,
    target: _Target,
    payload: dict[str, Any],
    state_reason_due: tuple[DeliveryState, str | None, datetime | None],
    expires_at: datetime | None,
) -> Delivery:
    notification = routing.notification
    state, reason, due_at = state_reason_due
    body = dict(payload)
    if target.subscription is not None:
        body["_subscription"] = target.subscription
    if notification.collapse_key:
        body["_collapse_key"] = notification.collapse_key
    return Delivery(
        id=delivery_id(notification.id, channel, target.ref),
        notification_id=notification.id,
        user_id=notification.user_id,
        channel=channel,
        target=target.target,
        target_ref=target.ref,
        state=state,
        policy=routing.category.policy_for(channel),
        priority=notification.priority,
        category=notification.category,
        payload=body,
        platform=target.platform,
        last_error=reason,
        due_at=due_at,
        expires_at=expires_at,
    )


def _targets(routing: RoutingInput, channel: Channel) -> list[_Target]:
    user = routing.user
    assert user is not None
    if channel == Channel.PUSH:
        return [
            _Target(d.token, d.id, d.platform.value, d.subscription)
            for d in routing.devices
            if d.active
        ]
    if channel == Channel.EMAIL:
        return [_Target(user.email, user.email)] if user.email else []
    if channel == Channel.SMS:
        return [_Target(user.phone, user.phone)] if user.phone else []
    return [_Target(user.id, user.id)]


def _no_target_reason(channel: Channel) -> str:
    return {
        Channel.PUSH: "no active device",
        Channel.EMAIL: "no email address",
        Channel.SMS: "no phone number",
        Channel.IN_APP: "no user",
    }[channel]


def _content(routing: RoutingInput, channel: Channel) -> dict[str, Any]:
    """The channel's rendered parts: from the template when it has this channel, else
    from the notification's title and body."""
    notification = routing.notification
    user = routing.user
    assert user is not None
    rendered: dict[str, str] | None = None
    if routing.template is not None:
        variables = {**notification.variables, "user": {"id": user.id, "locale": user.locale}}
        rendered = Template.from_json(routing.template).render(channel, user.locale, variables)
    title = rendered.get("title", rendered.get("subject")) if rendered else notification.title
    body = rendered.get("body", rendered.get("text")) if rendered else notification.body
    data = notification.data
    if channel == Channel.EMAIL:
        parts = {
            "subject": (rendered or {}).get("subject") or title,
            "text": (rendered or {}).get("text") or body,
            "html": (rendered or {}).get("html"),
        }
        return {k: v for k, v in parts.items() if v} if parts["subject"] or parts["text"] else {}
    if channel == Channel.SMS:
        text = body or title
        return {"body": text} if text else {}
    if not (title or body or data):
        return {}
    return {k: v for k, v in {"title": title, "body": body, "data": data}.items() if v}


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
