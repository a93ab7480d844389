"""A fake of Microsoft Teams' two webhook kinds: Office 365 connector URLs
(`/webhookb2/...`, answer 200 with "1") and Workflows URLs (`/workflows/...`, answer 202
Accepted). Both take the message envelope {"type": "message", "attachments": [{
"contentType": "application/vnd.microsoft.card.adaptive", "content": {AdaptiveCard}}]};
anything else is 400. A removed webhook is 404; `throttle(url)` answers 429."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from herald.fakes.common import FakeServer, Fault, Request, Response

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
KNOWN_ELEMENTS = frozenset({"TextBlock", "FactSet", "Image", "ColumnSet", "Container"})


@dataclass(frozen=True, slots=True)
class TeamsPost:
    path: str
    card: dict[str, Any]


def card_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("type") != "message":
        return "the body must be {type: message, attachments: [...]}"
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "attachments must hold a card"
    for attachment in attachments:
        if not isinstance(attachment, dict) or attachment.get("contentType") != CARD_TYPE:
            return f"contentType must be {CARD_TYPE}"
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return "content must be an AdaptiveCard"
        if not isinstance(card.get("version"), str):
            return "the card needs a version"
        for element in card.get("body") or []:
            if not isinstance(element, dict) or element.get("type") not in KNOWN_ELEMENTS:
                return "unknown card element"
    return None


class FakeTeams(FakeServer):
    def __init__(self, **server_options: Any) -> None:
        super().__init__(**server_options)
        self.hooks: set[str] = set()
        self.received: list[TeamsPost] = []

    def create_webhook(self, *, workflow: bool = True) -> str:
        if workflow:
            path = f"/workflows/{secrets.token_hex(16)}/triggers/manual/paths/invoke"
        else:
            path = f"/webhookb2/{secrets.token_hex(16)}/IncomingWebhook/{secrets.token_hex(16)}"
        self.hooks.add(path)
        return self.base_url + path

    def remove(self, url: str) -> None:
        self.hooks.discard(url.removeprefix(self.base_url))

    def throttle(self, url: str, *, retry_after: float = 1, times: int | None = 1) -> None:
        self.faults.add(url.removeprefix(self.base_url), Fault("429", times, retry_after))

    def unavailable(self) -> Response:
        return Response(503, b"Service Unavailable")

    async def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path not in self.hooks:
            return Response(404, b"Not Found")
        fault = self.faults.take(request.path)
        if fault is not None:
            return Response(429, b"Too Many Requests", (("retry-after", "1"),))
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return Response(400, b"Bad payload: not JSON")
        problem = card_problem(body)
        if problem:
            return Response(400, problem.encode())
        card = body["attachments"][0]["content"]
        self.received.append(TeamsPost(request.path, card))
        if request.path.startswith("/workflows/"):
            return Response(202, b"")
        return Response(200, b"1")
