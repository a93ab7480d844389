"""Provider webhooks: delivery reports, bounces, complaints and opt-outs close the loop in
the delivery log. Every request's signature is checked before anything changes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, Request

from herald.api.deps import RuntimeDep, public
from herald.api.errors import ApiError
from herald.api.responses import WebhookOut
from herald.domain import DeliveryState
from herald.providers.callbacks import WebhookConfig, parse_webhook
from herald.providers.events import (
    UnknownWebhookProvider,
    WebhookEvent,
    WebhookNotAllowed,
    WebhookRejected,
)
from herald.runtime import Runtime
from herald.storage import ProviderReport

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
log = structlog.get_logger()
S = DeliveryState

# What each reported kind makes of the delivery (None: an event in the log only).
STATE_FOR_KIND: dict[str, DeliveryState | None] = {
    "delivered": S.DELIVERED,
    "bounced": S.UNDELIVERABLE,
    "complained": S.DELIVERED,
    "failed": S.FAILED,
    "unsubscribed": S.DELIVERED,
    "opt_out": S.UNDELIVERABLE,
    "opt_in": None,
    "deferred": None,
    "opened": S.DELIVERED,
    "clicked": S.DELIVERED,
}
SUPPRESSING_KINDS = {"bounced", "complained", "failed", "unsubscribed", "opt_out"}
OPT_KINDS = {"opt_out", "opt_in"}
OPT_EVENT_ID_DAYS = 5 * 365


# The SNS message (SES notifications arrive in one): documented so the API reference shows
# it and the OpenAPI fuzz tests generate such bodies. The handler still reads the raw bytes:
# the signature is checked over exactly what was sent.
_SNS_TEXT = {"type": "string", "maxLength": 262144}
SNS_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["Type", "MessageId", "TopicArn", "Timestamp", "SignatureVersion"],
    "properties": {
        "Type": {
            "type": "string",
            "enum": ["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"],
        },
        "MessageId": _SNS_TEXT,
        "TopicArn": _SNS_TEXT,
        "Subject": _SNS_TEXT,
        "Message": _SNS_TEXT,
        "Timestamp": {"type": "string", "format": "date-time"},
        "SignatureVersion": {"type": "string", "enum": ["1", "2"]},
        "Signature": _SNS_TEXT,
        "SigningCertURL": _SNS_TEXT,
        "SubscribeURL": _SNS_TEXT,
        "UnsubscribeURL": _SNS_TEXT,
        "Token": _SNS_TEXT,
    },
}
_SNS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SNS_MESSAGE_SCHEMA}},
    }
}


@router.post("/ses", response_model=WebhookOut, dependencies=[public()], openapi_extra=_SNS_BODY)
async def ses_webhook(request: Request, rt: RuntimeDep) -> dict[str, Any]:
    """Amazon SES events through an SNS HTTPS subscription (signature verified)."""
    return await _receive("ses", request, rt)


@router.post("/sns", response_model=WebhookOut, dependencies=[public()], openapi_extra=_SNS_BODY)
async def sns_webhook(request: Request, rt: RuntimeDep) -> dict[str, Any]:
    """The same as /v1/webhooks/ses (an SNS subscription's other usual name)."""
    return await _receive("sns", request, rt)


@router.post("/{provider}", response_model=WebhookOut, dependencies=[public()])
async def provider_webhook(provider: str, request: Request, rt: RuntimeDep) -> dict[str, Any]:
    return await _receive(provider, request, rt)


async def _receive(provider: str, request: Request, rt: RuntimeDep) -> dict[str, Any]:
    body = await request.body()
    url = rt.settings.effective_public_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    try:
        events = await parse_webhook(
            provider,
            url=url,
            headers=dict(request.headers),
            body=body,
            config=_config(rt),
            now=rt.clock.now(),
        )
    except UnknownWebhookProvider as error:
        raise ApiError(404, "not_found", str(error)) from None
    except WebhookNotAllowed as error:
        log.warning("webhook refused", provider=provider, reason=str(error))
        raise ApiError(403, "forbidden", f"webhook refused: {error}") from None
    except WebhookRejected as error:
        log.warning("webhook refused", provider=provider, reason=str(error))
        raise ApiError(401, "unauthorized", f"webhook refused: {error}") from None
    fresh = await _claim_fresh(rt, events)
    try:
        applied = await apply_events(rt, provider, fresh.events)
    except BaseException:
        # Not applied: forget the ids so that the provider's retry is applied.
        for name, ids in fresh.claimed.items():
            await rt.storage.feedback.forget_webhook_events(name, ids)
        raise
    return {
        "received": len(events),
        "matched": applied,
        "duplicates": len(events) - len(fresh.events),
    }


def _config(rt: Runtime) -> WebhookConfig:
    """One WebhookConfig per runtime: its SNS certificate cache serves every request."""
    if rt.webhook_config is None:
        rt.webhook_config = WebhookConfig.from_settings(rt.settings, rt.clock)
    return rt.webhook_config


@dataclass(slots=True)
class _Fresh:
    events: list[WebhookEvent]
    claimed: dict[str, set[str]]  # provider -> ids this request recorded


async def _claim_fresh(rt: Runtime, events: list[WebhookEvent]) -> _Fresh:
    """The events not seen before, by the provider's event ids (kept in the database, so
    a replay is dropped by every API process, after restarts too). An event none of whose
    ids was seen is applied; one with any id seen (earlier, or earlier in this request) is
    a retry or a replay and is dropped."""
    now = rt.clock.now()
    keep: dict[str, dict[str, datetime]] = {}
    for event in events:
        # Opt-in and opt-out have no signed time (Twilio): their signed id is what stops a
        # replay, so it is kept for years rather than for the event log's retention.
        lasting = event.kind in OPT_KINDS
        for position, event_id in enumerate(event.event_ids):
            days = (
                OPT_EVENT_ID_DAYS
                if lasting and position == 0
                else rt.storage.database.retention_days
            )
            until = now + timedelta(days=days)
            ids = keep.setdefault(event.provider, {})
            ids[_db_id(event_id)] = max(until, ids.get(_db_id(event_id), until))
    claimed = {
        provider: await rt.storage.feedback.claim_webhook_events(provider, ids)
        for provider, ids in keep.items()
    }
    fresh: list[WebhookEvent] = []
    used: set[tuple[str, str]] = set()
    for event in events:
        keys = {(event.provider, _db_id(event_id)) for event_id in event.event_ids}
        if any(key[1] not in claimed[key[0]] or key in used for key in keys):
            log.info("webhook event already applied", provider=event.provider, ids=event.event_ids)
            continue
        used |= keys
        fresh.append(event)
    return _Fresh(fresh, claimed)


def _db_id(event_id: str) -> str:
    """Ids as stored (255 characters at most; a longer one is stored as its digest)."""
    if len(event_id) <= 200:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


async def apply_events(rt: Runtime, provider: str, events: list[WebhookEvent]) -> int:
    for event in events:
        if event.kind == "subscription_confirmation":
            await _confirm_subscription(str(event.detail.get("subscribe_url", "")))
    reportable = [e for e in events if e.kind in STATE_FOR_KIND]
    reports = [
        ProviderReport(
            delivery_id=e.delivery_id,
            provider_message_id=e.provider_message_id,
            state=_state(e),
            provider=provider,
            detail={"webhook": e.kind, "permanent": e.permanent, **e.detail},
            error=f"{e.kind}: {e.detail.get('reason') or e.detail.get('error') or ''}".rstrip(": "),
        )
        for e in reportable
    ]
    matched = await rt.storage.feedback.record_provider_events(reports)
    arrived_at = rt.clock.now()
    for event, delivery in zip(reportable, matched, strict=True):
        address = event.address or (delivery.target if delivery else None)
        channel = (
            delivery.channel.value if delivery else ("sms" if event.kind in OPT_KINDS else "email")
        )
        # By event time where the provider gives one; Twilio's inbound STOP/START carry
        # none, so their arrival (each applied once, by its id) orders them.
        happened_at = event.occurred_at or arrived_at
        if address and event.kind == "opt_in":
            await rt.storage.feedback.lift_opt_outs(channel, address, happened_at)
        elif address and event.permanent and event.kind in SUPPRESSING_KINDS:
            reason = "opt-out (STOP)" if event.kind == "opt_out" else f"{provider} {event.kind}"
            await rt.storage.suppressions.add(channel, address, reason, event_at=happened_at)
    return sum(1 for d in matched if d is not None)


def _state(event: WebhookEvent) -> DeliveryState:
    state = STATE_FOR_KIND[event.kind]
    if state is None or (event.kind == "bounced" and not event.permanent):
        return S.SENT
    return state


async def _confirm_subscription(url: str) -> None:
    """SNS asks us to confirm the topic subscription by fetching its SubscribeURL (the
    parser has already checked the message's signature)."""
    if not url.startswith("https://"):
        log.warning("SNS subscription URL is not https; not confirming", url=url)
        return
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
        response.raise_for_status()
    except httpx.HTTPError as error:
        log.error("SNS subscription confirmation failed", error=str(error))
        # A 503 makes SNS send the confirmation again, and the caller forgets its
        # MessageId so that the retry is not taken for a repeat.
        raise ApiError(
            503,
            "unavailable",
            "could not confirm the SNS subscription; send it again",
            headers={"Retry-After": "10"},
        ) from None
    log.info("SNS subscription confirmed", status=response.status_code)
