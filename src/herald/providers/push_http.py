"""Small helpers shared by the push providers: TLS, Retry-After, encodings, the
delivery id every push payload carries."""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson

from herald.domain.channels import Priority

DELIVERY_ID_KEY = "herald_delivery_id"
# Size checks at accept time run before a delivery id exists: a UUID has this length.
PLACEHOLDER_DELIVERY_ID = "00000000-0000-0000-0000-000000000000"
_B64URL_RE = re.compile(r"^[A-Za-z0-9_\-]+={0,2}$")

HIGH_PRIORITIES = frozenset({Priority.CRITICAL, Priority.HIGH})


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system trust store, plus `ca_file` (HERALD_CA_FILE) when set: the local fakes'
    CA is trusted in addition to the public roots, never instead of them."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP-date; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_b64url(value: Any) -> bytes | None:
    """base64url (padding optional) to bytes, None when `value` is not such a string."""
    if not isinstance(value, str) or not _B64URL_RE.match(value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def title_body(title: str | None, body: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if title:
        fields["title"] = title
    if body:
        fields["body"] = body
    return fields
