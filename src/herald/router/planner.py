"""Turn one notification into its deliveries: channels by preference, targets by device and
address, content by template. Pure: no I/O, so it is tested directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from herald.domain import (
    ADDRESS_CHANNELS,
    CapClaim,
    CapRule,
    Channel,
    ChannelDecision,
    Delivery,
    DeliveryState,
    DigestFold,
    DigestRule,
    Priority,
    QuietHoursAction,
    Verdict,
    decide_channels,
    delivery_id,
    digest_id,
    folded_reason,
    next_occurrence,
    parse_wall_time,
)
from herald.domain.tracking import EmailHtml, EmailLinks, EmailTracking, tracked_email
from herald.providers.push_payloads import check_push_size
from herald.storage.records import RoutingInput
from herald.templates import Template, TemplateError

NO_TARGET = "-"
# The longest SMS body providers take (Twilio: 1,600 characters, ten-odd segments).
SMS_MAX_CHARS = 1600
UnsubscribeUrl = Callable[[str, str], str]  # (user id, category) -> URL


@dataclass(frozen=True, slots=True)
class EmailExtras:
    """What the router adds to each email: the footer's unsubscribe and preference-center
    links, and open/click tracking, which makes the HTML part here (`html`) so that what
    is tracked is what is sent."""

    unsubscribe_url: UnsubscribeUrl | None = None
    preferences_url: UnsubscribeUrl | None = None
    links: EmailLinks | None = None
    html: EmailHtml | None = None


NO_EXTRAS = EmailExtras()


@dataclass(frozen=True, slots=True)
class _Target:
    target: str
    ref: str
    platform: str | None = None  # push: the device's platform; chat: slack, teams, discord
    subscription: dict[str, Any] | None = None
    address: dict[str, Any] | None = None  # a channel address's config (webhook secret, ...)


@dataclass(slots=True)
class RoutingPlan:
    """A notification's deliveries, and the shaping the store applies as it writes them."""

    deliveries: list[Delivery] = field(default_factory=list)
    folds: list[DigestFold] = field(default_factory=list)
    claims: list[CapClaim] = field(default_factory=list)

    def extend(self, other: RoutingPlan) -> None:
        self.deliveries.extend(other.deliveries)
        self.folds.extend(other.folds)
        self.claims.extend(other.claims)


def plan_deliveries(
    routing: RoutingInput, now: datetime, email: EmailExtras = NO_EXTRAS
) -> list[Delivery]:
    return plan_routing(routing, now, email).deliveries


def plan_routing(
    routing: RoutingInput,
    now: datetime,
    email: EmailExtras = NO_EXTRAS,
) -> RoutingPlan:
    notification = routing.notification
    user = routing.user
    plan = RoutingPlan()
    if user is None:
        return plan
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
    for decision in decisions:
        deliveries = _channel_deliveries(routing, decision, expires_at, email)
        if email.links is not None and decision.channel == Channel.EMAIL:
            tracking = routing.category.tracking
            deliveries = [_tracked(d, tracking, email.links, email.html) for d in deliveries]
        plan.extend(_shape(routing, decision.channel, deliveries, zone, now))
    return plan


def _tracked(
    delivery: Delivery, tracking: EmailTracking, links: EmailLinks, compose: EmailHtml | None
) -> Delivery:
    """The one place an email's payload gets its open pixel and click redirects."""
    if delivery.state not in (DeliveryState.QUEUED, DeliveryState.DEFERRED):
        return delivery
    delivery.payload = tracked_email(delivery.payload, tracking, links(delivery.id), compose)
    return delivery


def _channel_deliveries(
    routing: RoutingInput,
    decision: ChannelDecision,
    expires_at: datetime | None,
    email: EmailExtras,
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
    if channel in ADDRESS_CHANNELS and not targets:
        return []  # a channel the user was given no address on is not theirs: no delivery
    if skip_reason is None and not targets:
        skip_reason = _no_target_reason(channel)
    if (
        skip_reason is None
        and channel == Channel.EMAIL
        and email.unsubscribe_url is not None
        and notification.priority != Priority.CRITICAL
    ):
        user_id, category = notification.user_id, notification.category
        payload["unsubscribe_url"] = email.unsubscribe_url(user_id, category)
        if email.preferences_url is not None:  # the preference center, linked from the footer
            payload["preferences_url"] = email.preferences_url(user_id, category)
    if skip_reason is not None:
        targets = [_Target("", NO_TARGET)]
    suppressed = routing.suppressed
    return [
        _delivery(
            routing,
            channel,
            target,
            payload,
            _state_and_reason(
                decision,
                skip_reason or _size_problem(channel, target, payload),
                (channel.value, target.target) in suppressed,
            ),
            expires_at,
        )
        for target in targets
    ]


def _size_problem(channel: Channel, target: _Target, payload: dict[str, Any]) -> str | None:
    """Why this copy is too large for the channel (and platform) it would go out on: each
    channel's own limit, so a long email is not refused for a push it will never be."""
    if channel == Channel.PUSH and target.platform is not None:
        try:
            over = check_push_size(
                target.platform,
                payload.get("title"),
                payload.get("body"),
                payload.get("data"),
                payload.get("push"),
            )
        except ValueError:  # an unknown platform: the provider answers for it
            return None
        if over:
            return f"the {target.platform} push payload is {over} bytes over the provider's limit"
    if channel == Channel.SMS and len(payload.get("body") or "") > SMS_MAX_CHARS:
        return f"the SMS text is over {SMS_MAX_CHARS} characters"
    return None


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
    if target.address is not None:
        body["_address"] = target.address
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
    if channel in ADDRESS_CHANNELS:
        return [
            _Target(a.target, a.id, a.kind.value, address=a.config)
            for a in routing.addresses
            if a.active and a.kind.channel == channel
        ]
    return [_Target(user.id, user.id)]


def _no_target_reason(channel: Channel) -> str:
    return {
        Channel.PUSH: "no active device",
        Channel.EMAIL: "no email address",
        Channel.SMS: "no phone number",
        Channel.IN_APP: "no user",
    }.get(channel, f"no {channel} address")


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
        if not (parts["subject"] or parts["text"]):
            return {}
        email: dict[str, Any] = {k: v for k, v in parts.items() if v}
        layout = (routing.template or {}).get("email_layout")
        if isinstance(layout, bool):
            email["layout"] = layout
        return email
    if channel == Channel.SMS:
        text = body or title
        return {"body": text} if text else {}
    if channel == Channel.WHATSAPP:
        text = body or title
        return {"body": text, "data": data} if text and data else {"body": text} if text else {}
    if not (title or body or data):
        return {}
    content = {k: v for k, v in {"title": title, "body": body, "data": data}.items() if v}
    rich = {k: v for k, v in notification.push.items() if v is not None}
    if channel == Channel.PUSH and rich:
        content["push"] = rich
    return content


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


# -- shaping: digests and frequency caps -----------------------------------------------------

_LIVE = (DeliveryState.QUEUED, DeliveryState.DEFERRED)


def _shape(
    routing: RoutingInput,
    channel: Channel,
    deliveries: list[Delivery],
    zone: ZoneInfo,
    now: datetime,
) -> RoutingPlan:
    """Critical notifications and digests themselves are never folded nor capped."""
    notification = routing.notification
    live = [d for d in deliveries if d.state in _LIVE]
    if not live or notification.priority == Priority.CRITICAL or notification.digest_id:
        return RoutingPlan(deliveries)
    at = live[0].due_at or now
    rule = routing.category.digest.get(channel)
    if rule is not None:
        digested = _digested(live[0], rule, zone, at)
        fold = _fold(routing, channel, rule, zone, at, (digested.id,), live[0])
        kept = [d for d in deliveries if d.state not in _LIVE]
        return RoutingPlan([*kept, digested], folds=[fold])
    rules = _cap_rules(routing, channel)
    if not rules:
        return RoutingPlan(deliveries)
    overflow_rule = routing.category.over_cap_digest.get(channel)
    ids = tuple(d.id for d in live)
    overflow = (
        _fold(routing, channel, overflow_rule, zone, at, ids, live[0]) if overflow_rule else None
    )
    claim = CapClaim(
        notification.id,
        notification.user_id,
        channel,
        rules,
        at,
        ids,
        overflow,
        _allowed_from(routing, zone),
    )
    return RoutingPlan(deliveries, claims=[claim])


def _allowed_from(routing: RoutingInput, zone: ZoneInfo) -> Callable[[datetime], datetime]:
    """For a copy the cap defers: the first instant at or after a time outside quiet hours
    (unless the category ignores them)."""
    quiet = routing.preferences.quiet_hours
    if quiet is None or routing.category.quiet_hours == QuietHoursAction.IGNORE:
        return _unchanged

    def allowed(at: datetime) -> datetime:
        return quiet.window_end(at, zone) if quiet.is_quiet(at, zone) else at

    return allowed


def _unchanged(at: datetime) -> datetime:
    return at


def _cap_rules(routing: RoutingInput, channel: Channel) -> tuple[CapRule, ...]:
    category = routing.category
    rules = []
    if (channel_cap := routing.channel_caps.get(channel)) is not None:
        rules.append(CapRule(channel_cap))
    if (category_cap := category.caps.get(channel)) is not None:
        rules.append(CapRule(category_cap, category.name))
    return tuple(rules)


def _digested(first: Delivery, rule: DigestRule, zone: ZoneInfo, at: datetime) -> Delivery:
    """The one delivery row standing for the channel's copy folded into a digest."""
    window = rule.window(at, zone)
    return Delivery(
        id=delivery_id(first.notification_id, first.channel, NO_TARGET),
        notification_id=first.notification_id,
        user_id=first.user_id,
        channel=first.channel,
        target="",
        target_ref=NO_TARGET,
        state=DeliveryState.DIGESTED,
        policy=first.policy,
        priority=first.priority,
        category=first.category,
        payload=digest_item(first),
        last_error=folded_reason(
            digest_id(first.user_id, first.category, first.channel, window.start)
        ),
        expires_at=first.expires_at,
    )


def _fold(
    routing: RoutingInput,
    channel: Channel,
    rule: DigestRule,
    zone: ZoneInfo,
    at: datetime,
    delivery_ids: tuple[str, ...],
    first: Delivery,
) -> DigestFold:
    notification = routing.notification
    item = {**digest_item(first), "notification_id": notification.id, "at": at.isoformat()}
    return DigestFold(
        notification.id,
        notification.user_id,
        notification.category,
        channel,
        rule,
        zone,
        at,
        delivery_ids,
        item,
    )


def digest_item(delivery: Delivery) -> dict[str, Any]:
    """What a digest shows of one notification: its rendered parts, without routing keys."""
    return {k: v for k, v in delivery.payload.items() if not k.startswith("_")}
