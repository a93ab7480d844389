"""Prometheus metrics, served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "herald_notifications_accepted", "Notifications accepted by the API", registry=r
        )
        self.replayed = Counter(
            "herald_notifications_replayed", "Idempotent replays answered", registry=r
        )
        self.routed = Counter("herald_notifications_routed", "Notifications routed", registry=r)
        self.planned = Counter(
            "herald_deliveries_planned", "Deliveries planned", ["channel", "state"], registry=r
        )
        self.outcomes = Counter(
            "herald_provider_outcomes",
            "Provider answers by outcome",
            ["channel", "provider", "outcome"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "herald_provider_send_seconds",
            "Time for one provider batch",
            ["provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.claimed = Counter(
            "herald_deliveries_claimed", "Deliveries claimed", ["channel"], registry=r
        )
        self.claim_lost = Counter(
            "herald_deliveries_claim_skipped",
            "Bus messages whose delivery was not claimable (already handled)",
            ["channel"],
            registry=r,
        )
        self.released = Counter(
            "herald_deliveries_released", "Deferred deliveries released", ["reason"], registry=r
        )
        self.digests_closed = Counter(
            "herald_digests_closed", "Digest windows closed into a notification", registry=r
        )
        self.relayed = Counter("herald_outbox_relayed", "Outbox rows published", registry=r)
        self.circuit_open = Gauge(
            "herald_provider_circuit_open",
            "1 while a provider's circuit is open",
            ["provider"],
            registry=r,
        )
        self.engagement = Counter(
            "herald_engagement",
            "First reports of what recipients did (opened, clicked, dismissed, read)",
            ["event", "channel", "category"],
            registry=r,
        )
        self.workflow_steps = Counter(
            "herald_workflow_steps",
            "Workflow steps done or skipped",
            ["type", "status"],
            registry=r,
        )
        self.workflow_timer_lag = Histogram(
            "herald_workflow_timer_lag_seconds",
            "How late a due workflow run was taken up",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.inbox_streams = Gauge("herald_inbox_streams", "Open inbox event streams", registry=r)


METRICS = Metrics()
