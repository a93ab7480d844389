"""Slack: `chat.postMessage` with the deployment's bot token (HERALD_SLACK_BOT_TOKEN) for a
channel id, or the address's own incoming-webhook URL.

Web API answers are HTTP 200 with {"ok": false, "error": ...} (429 with Retry-After for
`ratelimited`); incoming webhooks answer with the HTTP status and the error as text
(400 invalid_payload, 403 action_prohibited, 404 channel_not_found / no_service, 410
channel_is_archived).
"""

from __future__ import annotations

from typing import Any, Self

import aiohttp
import orjson

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import (
    Accepted,
    InvalidTarget,
    Outcome,
    ProviderDown,
    Rejected,
    Retry,
)
from herald.providers.base import OutboundMessage
from herald.providers.caller_http import Answer, CallerUrlProvider, caller_url_policy
from herald.providers.slack.payload import message as slack_message
from herald.providers.targets import TargetPolicy

POST_MESSAGE_PATH = "/api/chat.postMessage"
# chat.postMessage errors by what they mean for the delivery (Slack's method reference).
GONE_ERRORS = frozenset(
    {"channel_not_found", "is_archived", "not_in_channel", "no_service", "channel_is_archived"}
)
CREDENTIAL_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "no_permission",
        "ekm_access_denied",
    }
)
TRANSIENT_ERRORS = frozenset({"ratelimited", "rate_limited", "service_unavailable", "fatal_error"})


def is_webhook_url(target: str) -> bool:
    return target.startswith("https://")


class SlackProvider(CallerUrlProvider):
    name = "slack"
    channel = Channel.CHAT
    # Slack's documented limit for chat.postMessage and incoming webhooks: about 1 per
    # second per channel, bursts allowed.
    default_rate_per_s = 1.0

    def __init__(
        self,
        *,
        targets: TargetPolicy,
        bot_token: str | None = None,
        base_url: str = "https://slack.com",
        **options: Any,
    ) -> None:
        super().__init__(targets=targets, **options)
        self._bot_token = bot_token
        self._api_url = base_url.rstrip("/") + POST_MESSAGE_PATH

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self:
        return cls(
            targets=caller_url_policy(settings),
            bot_token=settings.slack_bot_token,
            base_url=settings.slack_base_url,
            ca_file=settings.ca_file,
        )

    def describe(self) -> str:
        return "slack (incoming webhooks" + (", bot token)" if self._bot_token else ")")

    async def _send_one(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        body = slack_message(message.payload)
        if is_webhook_url(message.target):
            answer = await self.post(
                session, message.target, orjson.dumps(body), {}, delivery_id=message.delivery_id
            )
            return classify_webhook(answer) if isinstance(answer, Answer) else answer
        if not self._bot_token:
            return Rejected("a Slack channel id needs HERALD_SLACK_BOT_TOKEN")
        answer = await self.post(
            session,
            self._api_url,
            orjson.dumps({"channel": message.target, **body}),
            {"Authorization": f"Bearer {self._bot_token}"},
            delivery_id=message.delivery_id,
        )
        return classify_api(answer) if isinstance(answer, Answer) else answer


def classify_api(answer: Answer) -> Outcome:
    document = answer.json()
    if not isinstance(document, dict):
        document = {}
    if answer.status == 200 and document.get("ok") is True:
        ts = document.get("ts")
        return Accepted(provider_message_id=str(ts) if ts else None)
    error = str(document.get("error") or f"http_{answer.status}")
    reason = f"slack {error}"
    if answer.status == 429 or error in TRANSIENT_ERRORS or answer.status >= 500:
        return Retry(reason, after=answer.retry_after())
    if error in GONE_ERRORS:
        return InvalidTarget(reason)
    if error in CREDENTIAL_ERRORS:
        return ProviderDown(reason)
    return Rejected(reason)


def classify_webhook(answer: Answer) -> Outcome:
    status = answer.status
    error = answer.body[:100].decode("utf-8", "replace").strip()
    reason = f"slack webhook {status} {error}".strip()
    if 200 <= status < 300:
        return Accepted()
    if status == 429 or status >= 500:
        return Retry(reason, after=answer.retry_after())
    if status in (403, 404, 410) or error in GONE_ERRORS:
        return InvalidTarget(reason)
    return Rejected(reason)
