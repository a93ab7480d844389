"""Per-provider circuit breakers: a provider that said it is down gets no traffic until
its cool-down passes; then one batch probes it (half-open)."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from herald.clock import Clock
from herald.metrics import METRICS

log = structlog.get_logger()


@dataclass
class CircuitBreaker:
    clock: Clock
    cooldown_seconds: float = 30.0
    _open_until: dict[str, float] = field(default_factory=dict)

    def is_open(self, provider: str) -> bool:
        until = self._open_until.get(provider)
        return until is not None and self.clock.time() < until

    def open(self, provider: str, reason: str, retry_after: float | None = None) -> float:
        """Open (or keep open) the circuit; returns the seconds until it half-opens."""
        seconds = max(self.cooldown_seconds, retry_after or 0.0)
        if not self.is_open(provider):
            log.error(
                "provider down: circuit opened, its deliveries wait",
                provider=provider,
                reason=reason,
                retry_in_s=round(seconds, 1),
            )
        self._open_until[provider] = self.clock.time() + seconds
        METRICS.circuit_open.labels(provider).set(1)
        return seconds

    def close(self, provider: str) -> None:
        if self._open_until.pop(provider, None) is not None:
            log.info("provider answering again: circuit closed", provider=provider)
            METRICS.circuit_open.labels(provider).set(0)

    def remaining(self, provider: str) -> float:
        return max(0.0, self._open_until.get(provider, 0.0) - self.clock.time())
