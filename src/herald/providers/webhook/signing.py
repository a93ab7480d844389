"""Standard Webhooks signatures (https://www.standardwebhooks.com): the sender's side.

The secret is `whsec_` + base64 of 24 random bytes; the signature is
`v1,` + base64(HMAC-SHA256(secret bytes, "{webhook-id}.{webhook-timestamp}.{body}")), sent
in the `webhook-signature` header beside `webhook-id` and `webhook-timestamp` (Unix
seconds). A receiver verifies it with the `standardwebhooks` library of its language.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_problem(secret: str) -> str | None:
    """What is wrong with a caller's own secret, or None."""
    raw = _secret_bytes(secret)
    if raw is None:
        return f"must be '{SECRET_PREFIX}' followed by base64"
    if not 24 <= len(raw) <= 64:
        return "must decode to 24 to 64 bytes"
    return None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    raw = _secret_bytes(secret)
    if raw is None:
        raise ValueError("not a Standard Webhooks secret")
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(raw, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def _secret_bytes(secret: str) -> bytes | None:
    if not secret.startswith(SECRET_PREFIX):
        return None
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return None
