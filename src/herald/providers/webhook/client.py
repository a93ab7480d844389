"""The webhook channel: the notification as JSON, POSTed to the user's endpoint and signed
per Standard Webhooks (signing.py).

`webhook-id` is the delivery id, the same on every attempt, so a receiver drops a repeat.
Answers: 2xx accepted; 410 Gone deactivates the endpoint (InvalidTarget); 400, 413 and 422
say the body is refused (Rejected: the same body will not pass later); anything else, or
no answer, is retried with the worker's backoff (Retry-After honoured).
"""

from __future__ import annotations

from typing import Any, Self

import aiohttp
import orjson

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, Rejected, Retry
from herald.providers.base import OutboundMessage
from herald.providers.caller_http import Answer, CallerUrlProvider, caller_url_policy
from herald.providers.targets import TargetPolicy
from herald.providers.webhook import signing

EVENT_TYPE = "notification"
REFUSED_BODY_STATUSES = frozenset({400, 413, 422})


class WebhookProvider(CallerUrlProvider):
    name = "webhook"
    channel = Channel.WEBHOOK

    def __init__(self, *, targets: TargetPolicy, clock: Clock = SYSTEM_CLOCK, **options: Any):
        super().__init__(targets=targets, **options)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self:
        return cls(targets=caller_url_policy(settings), ca_file=settings.ca_file, clock=clock)

    def describe(self) -> str:
        return "webhook (Standard Webhooks signatures)"

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        secret = (message.address or {}).get("secret")
        if not isinstance(secret, str) or signing.secret_problem(secret):
            return InvalidTarget("the webhook address has no valid signing secret")
        body = orjson.dumps(event_body(message, self._clock.now().isoformat()))
        headers = signing.headers(secret, message.delivery_id, int(self._clock.time()), body)
        answer = await self.post(
            session, message.target, body, headers, delivery_id=message.delivery_id
        )
        return classify(answer) if isinstance(answer, Answer) else answer


def event_body(message: OutboundMessage, timestamp: str) -> dict[str, Any]:
    """The Standard Webhooks payload shape: {type, timestamp, data}."""
    payload = message.payload
    return {
        "type": EVENT_TYPE,
        "timestamp": timestamp,
        "data": {
            "notification_id": message.notification_id,
            "delivery_id": message.delivery_id,
            "user_id": message.user_id,
            "category": message.category,
            "priority": message.priority.value,
            "title": payload.get("title"),
            "body": payload.get("body"),
            "data": payload.get("data") or {},
        },
    }


def classify(answer: Answer) -> Outcome:
    status = answer.status
    if 200 <= status < 300:
        return Accepted()
    reason = f"webhook endpoint answered {status}"
    if status == 410:
        return InvalidTarget(f"{reason} (Gone): endpoint deactivated")
    if status in REFUSED_BODY_STATUSES:
        return Rejected(reason)
    return Retry(reason, after=answer.retry_after())
