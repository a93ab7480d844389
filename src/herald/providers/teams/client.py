"""Microsoft Teams: an Adaptive Card POSTed to the address's incoming-webhook or Workflows
("When a Teams webhook request is received") URL.

Workflows answer 202 Accepted, the older Office 365 connectors 200 with "1"; a connector
that is throttled may still answer 200 with the error in its text. 404/410 (and 401/403:
the flow or connector was removed or its URL rotated) deactivate the address.
"""

from __future__ import annotations

from typing import Self

import aiohttp
import orjson

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, Rejected, Retry
from herald.providers.base import OutboundMessage
from herald.providers.caller_http import Answer, CallerUrlProvider, caller_url_policy
from herald.providers.teams.payload import message as teams_message

GONE_STATUSES = frozenset({401, 403, 404, 410})


class TeamsProvider(CallerUrlProvider):
    name = "teams"
    channel = Channel.CHAT
    # Microsoft documents 4 requests per second per incoming webhook.
    default_rate_per_s = 4.0

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self:
        return cls(targets=caller_url_policy(settings), ca_file=settings.ca_file)

    def describe(self) -> str:
        return "teams (incoming webhooks, Workflows)"

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        body = orjson.dumps(teams_message(message.payload))
        answer = await self.post(session, message.target, body, {}, delivery_id=message.delivery_id)
        return classify(answer) if isinstance(answer, Answer) else answer


def classify(answer: Answer) -> Outcome:
    status = answer.status
    text = answer.body[:200].decode("utf-8", "replace").strip()
    reason = f"teams {status} {text}".strip()
    if 200 <= status < 300:
        if "429" in text:  # a connector's throttling, reported inside a 200
            return Retry(reason)
        return Accepted()
    if status == 429 or status >= 500:
        return Retry(reason, after=answer.retry_after())
    if status in GONE_STATUSES:
        return InvalidTarget(reason)
    return Rejected(reason)
