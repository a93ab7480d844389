"""A token bucket per provider, so a burst is smoothed instead of answered with 429s."""

from __future__ import annotations

import asyncio

from herald.clock import Clock


class TokenBucket:
    def __init__(self, rate_per_s: float, clock: Clock, burst: float | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_per_s
        self.capacity = burst if burst is not None else max(1.0, rate_per_s)
        self.clock = clock
        self._tokens = self.capacity
        self._updated = clock.time()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock.time()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def try_acquire(self, count: int = 1) -> float:
        """Take `count` tokens now if there are enough: 0.0; else the seconds until there
        will be (nothing is taken). A count over the burst size is never granted whole."""
        self._refill()
        if count <= self._tokens:
            self._tokens -= count
            return 0.0
        return (min(count, self.capacity) - self._tokens) / self.rate or 1.0 / self.rate

    async def acquire(self, count: int = 1, *, urgent: bool = False) -> None:
        """Wait until `count` sends are allowed (a batch larger than the burst is let
        through in pieces of the burst size). `urgent` sends (critical and high) do not
        queue behind bulk ones: they take their tokens at once, into debt if need be, and
        the bulk sends after them wait that much longer."""
        if urgent:
            self._refill()
            self._tokens -= count
            return
        async with self._lock:
            remaining = float(count)
            while remaining > 0:
                self._refill()
                take = min(remaining, self._tokens, self.capacity)
                if take >= min(remaining, self.capacity) and take > 0:
                    self._tokens -= take
                    remaining -= take
                    continue
                needed = min(remaining, self.capacity) - self._tokens
                await self.clock.sleep(needed / self.rate)
