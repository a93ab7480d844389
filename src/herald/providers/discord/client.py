"""Discord: POST {webhook URL}?wait=true with an embed (payload.py).

`wait=true` makes Discord answer 200 with the message (its id) instead of 204. A 429
carries {"retry_after": seconds, "global": bool} (and Retry-After); 404 Unknown Webhook
(10015) or 401 Invalid Webhook Token (50027) mean the webhook was deleted: the address
is deactivated.
"""

from __future__ import annotations

from typing import Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, Rejected, Retry
from herald.providers.base import OutboundMessage
from herald.providers.caller_http import Answer, CallerUrlProvider, caller_url_policy
from herald.providers.discord.payload import message as discord_message

GONE_STATUSES = frozenset({401, 403, 404})


def with_wait(url: str) -> str:
    parts = urlsplit(url)
    query = "&".join(p for p in (parts.query, "wait=true") if p)
    return urlunsplit(parts._replace(query=query))


class DiscordProvider(CallerUrlProvider):
    name = "discord"
    channel = Channel.CHAT
    # Discord documents no fixed webhook rate; about 5 per 2 seconds per webhook is
    # what its headers report in practice (unconfirmed).
    default_rate_per_s = 2.5

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self:
        return cls(targets=caller_url_policy(settings), ca_file=settings.ca_file)

    def describe(self) -> str:
        return "discord (webhooks)"

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        body = orjson.dumps(discord_message(message.payload))
        url = with_wait(message.target)
        answer = await self.post(session, url, body, {}, delivery_id=message.delivery_id)
        return classify(answer) if isinstance(answer, Answer) else answer


def classify(answer: Answer) -> Outcome:
    status = answer.status
    document = answer.json()
    detail = document if isinstance(document, dict) else {}
    if 200 <= status < 300:
        message_id = detail.get("id")
        return Accepted(provider_message_id=str(message_id) if message_id else None)
    reason = f"discord {status} {detail.get('code', '')} {detail.get('message', '')}".strip()
    if status == 429:
        after = detail.get("retry_after")
        seconds = float(after) if isinstance(after, int | float) else answer.retry_after()
        return Retry(reason, after=seconds)
    if status >= 500:
        return Retry(reason, after=answer.retry_after())
    if status in GONE_STATUSES:
        return InvalidTarget(reason)
    return Rejected(reason)
