"""aiohttp plumbing shared by the HTTP/1.1 providers (SendGrid, Twilio)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp

# What a request can fail with before any answer: all of these are worth a retry.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    ssl.SSLError,
    OSError,
    TimeoutError,
)


def new_session(
    *, connections: int, timeout_s: float, ca_file: str | None = None
) -> aiohttp.ClientSession:
    """A kept-alive connection pool; `ca_file` adds trusted CAs (HERALD_CA_FILE)."""
    tls: ssl.SSLContext | bool = True
    if ca_file:
        tls = ssl.create_default_context()
        tls.load_verify_locations(cafile=ca_file)
    connector = aiohttp.TCPConnector(limit=connections, ssl=tls)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date is ignored)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
