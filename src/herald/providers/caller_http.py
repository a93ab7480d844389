"""What the providers that POST to a URL a caller chose share (webhook endpoints, Slack,
Teams and Discord incoming webhooks): the target policy at send time, one aiohttp pool that
connects only where the policy allows (every resolved address, DNS rebinding, IP literals),
and the outcomes of a request that got no answer.

An endpoint that does not answer is that endpoint's problem, not the provider's: a Retry
for this message, never ProviderDown (which would open the circuit for every user's URL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp.abc import AbstractResolver

from herald.config import Settings
from herald.domain.outcomes import InvalidTarget, Outcome, Retry
from herald.providers.http_session import (
    NETWORK_ERRORS,
    HttpProvider,
    new_session,
    refused_target,
)
from herald.providers.push_http import client_ssl_context, parse_retry_after
from herald.providers.targets import TargetPolicy

log = structlog.get_logger()


def caller_url_policy(settings: Settings) -> TargetPolicy:
    """Public https hosts only, unless HERALD_ALLOW_PRIVATE_TARGETS (tests, demos)."""
    return TargetPolicy(allow_private=settings.allow_private_targets)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def retry_after(self) -> float | None:
        """Retry-After in seconds (delta or HTTP date), None when absent."""
        return parse_retry_after(self.headers.get("retry-after"), time.time())

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


class CallerUrlProvider(HttpProvider):
    """An HttpProvider whose every request goes to a caller-supplied URL."""

    batch_size = 50

    def __init__(
        self,
        *,
        targets: TargetPolicy,
        ca_file: Path | None = None,
        timeout: float = 10.0,
        connections: int = 100,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.targets = targets
        self._resolver = resolver  # tests script DNS answers with it
        self._ca_file = ca_file
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        return new_session(
            connections=self._connections,
            connections_per_host=10,
            timeout_s=self._timeout,
            tls=client_ssl_context(self._ca_file),
            targets=self.targets,
            resolver=self._resolver,
        )

    async def post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        delivery_id: str,
    ) -> Answer | Outcome:
        """POST `body` to `url`, or the outcome of not getting an answer."""
        problem = self.targets.url_problem(url)
        if problem:
            return InvalidTarget(f"{self.name} URL refused: {problem}")
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                names = {k.lower(): v for k, v in response.headers.items()}
                return Answer(response.status, names, raw)
        except NETWORK_ERRORS as error:
            refused = refused_target(error)
            if refused is not None:
                return InvalidTarget(f"{self.name} URL refused: {refused.detail}")
            # The detail goes to the log only: stored, it would tell a caller which ports
            # of the host their URL names are open.
            log.info(
                f"{self.name} endpoint unreachable",
                delivery_id=delivery_id,
                error=f"{type(error).__name__}: {error}",
            )
            return Retry(f"{self.name} endpoint unreachable")
