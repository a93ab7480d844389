"""Per-tenant (API key) rate limits: requests per second and notifications per second.

Each API process keeps its own buckets, so a fleet of N API processes admits up to N times
the configured rate per key; the limit protects each process's share of the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from herald.api.errors import ApiError
from herald.api.schemas import MAX_BATCH
from herald.clock import Clock
from herald.workers.ratelimit import TokenBucket


@dataclass
class TenantLimits:
    clock: Clock
    requests_per_s: float
    notifications_per_s: float
    _requests: dict[str, TokenBucket] = field(default_factory=dict)
    _notifications: dict[str, TokenBucket] = field(default_factory=dict)

    def check_request(self, key_id: str) -> None:
        self._take(self._requests, self.requests_per_s, 1, key_id, 1, "requests")

    def check_notifications(self, key_id: str | None, count: int) -> None:
        """The burst holds at least one full batch, so a batch is never refused for good."""
        if key_id is not None:
            rate = self.notifications_per_s
            self._take(self._notifications, rate, MAX_BATCH, key_id, count, "notifications")

    def _take(
        self,
        buckets: dict[str, TokenBucket],
        rate: float,
        least_burst: int,
        key_id: str,
        count: int,
        what: str,
    ) -> None:
        if rate <= 0:
            return
        bucket = buckets.get(key_id)
        if bucket is None:
            burst = max(rate * 2, least_burst)
            bucket = buckets[key_id] = TokenBucket(rate, self.clock, burst=burst)
        wait = bucket.try_acquire(count)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"this key is over its limit of {rate:g} {what} per second; retry in {wait:.2f}s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
