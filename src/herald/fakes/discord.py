"""A protocol-faithful fake of Discord's Execute Webhook, `POST /api/webhooks/{id}/{token}`.

Answers 204, or 200 with the message object when `?wait=true`; 404 {"message": "Unknown
Webhook", "code": 10015}; 401 {"message": "Invalid Webhook Token", "code": 50027}; 400
{"code": 50006} for an empty message and {"code": 50035} for limits (content 2000, 10
embeds, title 256, description 4096, 25 fields of 256/1024, 6000 characters over all
embeds); 429 {"message": "You are being rate limited.", "retry_after": s, "global": false}
with Retry-After.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from herald.fakes.common import FakeServer, Fault, Request, Response, json_response

PREFIX = "/api/webhooks/"


@dataclass(frozen=True, slots=True)
class DiscordPost:
    webhook_id: str
    body: dict[str, Any]


def _embed_chars(embed: dict[str, Any]) -> int:
    fields = embed.get("fields") or []
    return (
        len(embed.get("title", ""))
        + len(embed.get("description", ""))
        + sum(len(f.get("name", "")) + len(f.get("value", "")) for f in fields)
    )


def limit_problem(body: dict[str, Any]) -> str | None:
    content, embeds = body.get("content"), body.get("embeds") or []
    if isinstance(content, str) and len(content) > 2000:
        return "content: Must be 2000 or fewer in length."
    if len(embeds) > 10:
        return "embeds: Must be 10 or fewer in length."
    for embed in embeds:
        if len(embed.get("title", "")) > 256 or len(embed.get("description", "")) > 4096:
            return "embeds.0: title or description too long"
        fields = embed.get("fields") or []
        if len(fields) > 25 or any(
            not f.get("name")
            or not f.get("value")
            or len(f["name"]) > 256
            or len(f["value"]) > 1024
            for f in fields
        ):
            return "embeds.0.fields: invalid"
    if sum(_embed_chars(e) for e in embeds) > 6000:
        return "embeds: Embed size exceeds maximum size of 6000"
    return None


def _field_fits(field: dict[str, Any]) -> bool:
    name, value = field.get("name") or "", field.get("value") or ""
    return 0 < len(name) <= 256 and 0 < len(value) <= 1024


def error(status: int, code: int, message: str, **extra: Any) -> Response:
    return json_response(status, {"message": message, "code": code, **extra})


class FakeDiscord(FakeServer):
    def __init__(self, **server_options: Any) -> None:
        super().__init__(**server_options)
        self.webhooks: dict[str, str] = {}  # id -> token
        self.received: list[DiscordPost] = []

    def create_webhook(self) -> str:
        webhook_id = str(secrets.randbits(60))
        self.webhooks[webhook_id] = secrets.token_urlsafe(48)
        return f"{self.base_url}{PREFIX}{webhook_id}/{self.webhooks[webhook_id]}"

    def delete_webhook(self, url: str) -> None:
        webhook_id = url.removeprefix(self.base_url + PREFIX).split("/")[0]
        self.webhooks.pop(webhook_id, None)

    def rate_limit(self, url: str, *, retry_after: float = 0.5, times: int | None = 1) -> None:
        webhook_id = url.removeprefix(self.base_url + PREFIX).split("/")[0]
        self.faults.add(webhook_id, Fault("429", times, retry_after))

    def unavailable(self) -> Response:
        return json_response(503, {"message": "Service Unavailable", "code": 0})

    async def handle(self, request: Request) -> Response:
        webhook_id, _, token = request.path.removeprefix(PREFIX).partition("/")
        if request.method != "POST" or not request.path.startswith(PREFIX):
            return json_response(405, {"message": "405: Method Not Allowed", "code": 0})
        if webhook_id not in self.webhooks:
            return json_response(404, {"message": "Unknown Webhook", "code": 10015})
        if not secrets.compare_digest(token, self.webhooks[webhook_id]):
            return json_response(401, {"message": "Invalid Webhook Token", "code": 50027})
        fault = self.faults.take(webhook_id)
        if fault is not None:
            after = fault.retry_after or 0.5
            body = {"message": "You are being rate limited.", "retry_after": after, "global": False}
            return json_response(429, body, (("retry-after", str(max(1, int(after)))),))
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return json_response(
                400, {"message": "The request body contains invalid JSON.", "code": 50109}
            )
        if not isinstance(body, dict) or not (body.get("content") or body.get("embeds")):
            return error(400, 50006, "Cannot send an empty message")
        problem = limit_problem(body)
        if problem:
            return json_response(
                400, {"message": "Invalid Form Body", "code": 50035, "errors": problem}
            )
        self.received.append(DiscordPost(webhook_id, body))
        if "wait=true" not in request.query.split("&"):
            return Response(204)
        message = {"id": str(secrets.randbits(62)), "webhook_id": webhook_id, **body}
        return json_response(200, message)
