"""Provider webhooks: delivery reports, bounces, complaints and opt-outs close the loop in
the delivery log. Every request's signature is checked before anything changes."""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from fastapi import APIRouter, Request

from herald.api.deps import RuntimeDep, public
from herald.api.errors import ApiError
from herald.domain import DeliveryState
from herald.providers.webhooks import (
    UnknownWebhookProvider,
    WebhookConfig,
    WebhookEvent,
    WebhookRejected,
    parse_webhook,
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


@router.post("/ses", dependencies=[public()], openapi_extra=_SNS_BODY)
async def ses_webhook(request: Request, rt: RuntimeDep) -> dict[str, Any]:
    """Amazon SES events through an SNS HTTPS subscription (signature verified)."""
    return await _receive("ses", request, rt)


@router.post("/sns", dependencies=[public()], openapi_extra=_SNS_BODY)
async def sns_webhook(request: Request, rt: RuntimeDep) -> dict[str, Any]:
    """The same as /v1/webhooks/ses (an SNS subscription's other usual name)."""
    return await _receive("sns", request, rt)


@router.post("/{provider}", dependencies=[public()])
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
    except WebhookRejected as error:
        log.warning("webhook refused", provider=provider, reason=str(error))
        raise ApiError(401, "unauthorized", f"webhook refused: {error}") from None
    applied = await apply_events(rt, provider, events)
    return {"received": len(events), "matched": applied}


def _config(rt: Runtime) -> WebhookConfig:
    return rt.webhook_config or WebhookConfig.from_settings(rt.settings)


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
    matched = await rt.store.record_provider_events(reports)
    for event, delivery in zip(reportable, matched, strict=True):
        address = event.address or (delivery.target if delivery else None)
        channel = (
            delivery.channel.value
            if delivery
            else ("sms" if event.kind in ("opt_out", "opt_in") else "email")
        )
        if address and event.kind == "opt_in":
            await _lift_suppression(rt, channel, address)
        elif address and event.permanent and event.kind in SUPPRESSING_KINDS:
            reason = "opt-out (STOP)" if event.kind == "opt_out" else f"{provider} {event.kind}"
            await rt.store.add_suppression(channel, address, reason)
    return sum(1 for d in matched if d is not None)


def _state(event: WebhookEvent) -> DeliveryState:
    state = STATE_FOR_KIND[event.kind]
    if state is None or (event.kind == "bounced" and not event.permanent):
        return S.SENT
    return state


async def _lift_suppression(rt: Runtime, channel: str, address: str) -> None:
    page = await rt.store.list_suppressions(channel, address, 10, None)
    for suppression in page.items:
        if suppression.reason.startswith("opt-out"):
            await rt.store.delete_suppression(suppression.id)


async def _confirm_subscription(url: str) -> None:
    """SNS asks us to confirm the topic subscription by fetching its SubscribeURL (the
    parser has already checked the message's signature)."""
    if not url.startswith("https://"):
        log.warning("SNS subscription URL is not https; not confirming", url=url)
        return
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
        log.info("SNS subscription confirmed", status=response.status_code)
    except httpx.HTTPError as error:
        log.error("SNS subscription confirmation failed", error=str(error))
