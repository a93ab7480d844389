"""Small HTTP helpers shared by the push providers."""

from __future__ import annotations

import base64
import ssl
from email.utils import parsedate_to_datetime
from pathlib import Path

from herald.domain.channels import Priority

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
