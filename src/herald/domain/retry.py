"""Retry timing: exponential backoff with full jitter, never sooner than the provider asked."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 2.0
    max_seconds: float = 3600.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        jittered = rng.uniform(ceiling / 2, ceiling)
        return max(jittered, retry_after or 0.0)

    def next_attempt_at(
        self,
        now: datetime,
        attempt: int,
        retry_after: float | None,
        expires_at: datetime | None,
        rng: random.Random,
    ) -> datetime | None:
        """When to try again, or None when the attempts or the TTL are used up."""
        if attempt >= self.max_attempts:
            return None
        at = now + timedelta(seconds=self.delay(attempt, retry_after, rng))
        if expires_at is not None and at >= expires_at:
            return None
        return at
