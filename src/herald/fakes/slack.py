"""A protocol-faithful fake of Slack's two ways in.

- Web API `POST /api/chat.postMessage` with `Authorization: Bearer xoxb-...` and a JSON
  body: HTTP 200 with {"ok": true, "channel", "ts", "message"} or {"ok": false, "error"}
  (invalid_auth, channel_not_found, is_archived, no_text, invalid_blocks, msg_too_long);
  `ratelimited` is HTTP 429 with Retry-After.
- Incoming webhooks `POST /services/T.../B.../secret`: 200 "ok", or the HTTP status with
  the error as text (400 invalid_payload / no_text, 404 no_service, 410
  channel_is_archived, 429 rate limited).

Block Kit is checked as far as Herald uses it: header plain_text of at most 150, section
text at most 3000, at most 10 fields, at most 50 blocks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from herald.fakes.common import FakeServer, Fault, Request, Response, json_response

POST_MESSAGE = "/api/chat.postMessage"
MAX_BLOCKS = 50
MAX_TEXT = 40_000


@dataclass(frozen=True, slots=True)
class SlackPost:
    channel: str  # the channel id, or the webhook's channel
    via: str  # "api" or "webhook"
    body: dict[str, Any]


def block_problem(blocks: Any) -> str | None:
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return "invalid_blocks"
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "header":
            text = block.get("text") or {}
            if text.get("type") != "plain_text" or not 0 < len(text.get("text", "")) <= 150:
                return "invalid_blocks"
        elif kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                return "invalid_blocks"
            if text is not None and not 0 < len(text.get("text", "")) <= 3000:
                return "invalid_blocks"
            if fields is not None and len(fields) > 10:
                return "invalid_blocks"
        else:
            return "invalid_blocks"
    return None


class FakeSlack(FakeServer):
    def __init__(self, *, bot_token: str | None = None, **server_options: Any) -> None:
        super().__init__(**server_options)
        self.bot_token = bot_token or "xoxb-" + secrets.token_hex(12)
        self.channels: set[str] = set()
        self.archived: set[str] = set()
        self.webhooks: dict[str, str] = {}  # path -> channel id
        self.received: list[SlackPost] = []

    def create_channel(self, channel_id: str | None = None) -> str:
        channel = channel_id or "C" + secrets.token_hex(5).upper()
        self.channels.add(channel)
        return channel

    def create_webhook(self, channel_id: str | None = None) -> str:
        channel = self.create_channel(channel_id)
        path = f"/services/T{secrets.token_hex(4).upper()}/B{secrets.token_hex(4).upper()}/"
        path += secrets.token_urlsafe(18)
        self.webhooks[path] = channel
        return self.base_url + path

    def archive(self, channel_id: str) -> None:
        self.archived.add(channel_id)

    def rate_limit(self, key: str, *, retry_after: float = 1, times: int | None = 1) -> None:
        """Answer `ratelimited` for a channel id or a webhook URL."""
        self.faults.add(key.removeprefix(self.base_url), Fault("ratelimited", times, retry_after))

    def unavailable(self) -> Response:
        return Response(503, b"service_unavailable")

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, b"method_not_allowed")
        if request.path == POST_MESSAGE:
            return self._post_message(request)
        if request.path in self.webhooks:
            return self._incoming_webhook(request)
        return Response(404, b"no_service")

    def _post_message(self, request: Request) -> Response:
        if request.header("authorization") != f"Bearer {self.bot_token}":
            return json_response(200, {"ok": False, "error": "invalid_auth"})
        body = _json(request.body)
        if body is None:
            return json_response(200, {"ok": False, "error": "invalid_json"})
        channel = str(body.get("channel", ""))
        fault = self.faults.take(channel)
        if fault is not None:
            headers = (("retry-after", str(int(fault.retry_after or 1))),)
            return json_response(429, {"ok": False, "error": "ratelimited"}, headers)
        if channel not in self.channels:
            return json_response(200, {"ok": False, "error": "channel_not_found"})
        if channel in self.archived:
            return json_response(200, {"ok": False, "error": "is_archived"})
        problem = _content_problem(body)
        if problem:
            return json_response(200, {"ok": False, "error": problem})
        self.received.append(SlackPost(channel, "api", body))
        ts = f"{self.clock.time():.6f}"
        return json_response(200, {"ok": True, "channel": channel, "ts": ts, "message": body})

    def _incoming_webhook(self, request: Request) -> Response:
        channel = self.webhooks[request.path]
        fault = self.faults.take(request.path)
        if fault is not None:
            headers = (("retry-after", str(int(fault.retry_after or 1))),)
            return Response(429, b"rate_limited", headers)
        if channel in self.archived:
            return Response(410, b"channel_is_archived")
        body = _json(request.body)
        if body is None:
            return Response(400, b"invalid_payload")
        problem = _content_problem(body)
        if problem:
            return Response(400, problem.encode())
        self.received.append(SlackPost(channel, "webhook", body))
        return Response(200, b"ok", (("content-type", "text/html"),))


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _content_problem(body: dict[str, Any]) -> str | None:
    text, blocks = body.get("text"), body.get("blocks")
    if not text and not blocks:
        return "no_text"
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return "msg_too_long"
    return block_problem(blocks) if blocks is not None else None
