"""A webhook receiver as a Standard Webhooks consumer runs one: it verifies webhook-id,
webhook-timestamp (within 5 minutes) and webhook-signature (HMAC-SHA256, checked here
independently of Herald's signer) and records what it received.

Endpoints are made with `endpoint(secret)`; `answer(url, status, ...)` scripts an answer
(410 Gone, 500, 429 with Retry-After), for `times` requests or all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from herald.fakes.common import FakeServer, Fault, Request, Response, json_response

TOLERANCE_S = 300


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> str | None:
    """Why the request is not authentic, or None."""
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not message_id or not timestamp.isdigit() or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if abs(now - int(timestamp)) > TOLERANCE_S:
        return "timestamp outside the tolerance"
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return "bad secret"
    expected = base64.b64encode(
        hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return None
    return "no matching signature"


class FakeWebhookReceiver(FakeServer):
    def __init__(self, **server_options: Any) -> None:
        super().__init__(**server_options)
        self.secrets: dict[str, str] = {}  # path -> secret
        self.received: list[ReceivedWebhook] = []
        self.refused: list[tuple[str, str]] = []  # (path, why)
        self.attempts: list[tuple[str, str | None]] = []  # (path, webhook-id) of every POST

    def endpoint(self, secret: str | None = None) -> tuple[str, str]:
        """A new endpoint's URL and its secret."""
        secret = secret or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        path = f"/hooks/{secrets.token_hex(8)}"
        self.secrets[path] = secret
        return self.base_url + path, secret

    def answer(
        self, url: str, status: int, *, times: int | None = None, retry_after: float | None = None
    ) -> None:
        path = url.removeprefix(self.base_url)
        self.faults.add(path, Fault(str(status), times=times, retry_after=retry_after))

    def unavailable(self) -> Response:
        return Response(503, b"unavailable")

    async def handle(self, request: Request) -> Response:
        secret = self.secrets.get(request.path)
        if request.method != "POST" or secret is None:
            return Response(404, b"no such endpoint")
        self.attempts.append((request.path, request.header("webhook-id")))
        fault = self.faults.take(request.path)
        if fault is not None:
            headers = (("retry-after", str(int(fault.retry_after))),) if fault.retry_after else ()
            return Response(int(fault.kind), b"scripted", headers)
        why = verify(secret, request.headers, request.body, self.clock.time())
        if why is not None:
            self.refused.append((request.path, why))
            return Response(401, why.encode())
        self.received.append(ReceivedWebhook(request.path, dict(request.headers), request.body))
        return json_response(200, {"received": True})
