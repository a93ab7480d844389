"""Prometheus metrics, served at /metrics by the API and by every role's metrics port
(herald.ops_server). docs/operations.md lists them and the alerts to set on them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# A `_created` series beside every counter and histogram doubles what Prometheus stores
# for nothing it alerts on.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# From acceptance to the provider's answer: seconds for push, up to hours when deferred.
ACCEPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600)


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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "herald_provider_errors",
            "Provider answers other than accepted, by class (retry, invalid_target, rejected, "
            "provider_down, exception: the provider module raised)",
            ["channel", "provider", "kind"],
            registry=r,
        )
        self.deliveries_finished = Counter(
            "herald_deliveries_finished",
            "Deliveries that reached a final state, by channel, provider and state",
            ["channel", "provider", "state"],
            registry=r,
        )
        self.accept_to_provider_seconds = Histogram(
            "herald_accept_to_provider_seconds",
            "From the delivery's creation (the notification's acceptance) to the provider "
            "accepting it",
            ["channel", "provider"],
            buckets=ACCEPT_BUCKETS,
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
        self.http_requests = Counter(
            "herald_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "herald_http_request_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "herald_consumer_lag",
            "Messages of a topic not yet consumed by this process's member of the group "
            "(sum over processes for the group's lag)",
            ["topic", "group"],
            registry=r,
        )
        # The backlog: read from the database at scrape time by the processes that run
        # the scheduler (herald.ops_server.BacklogGauges), and only there exported.
        self.backlog_registry = b = CollectorRegistry()
        self.outbox_depth = Gauge("herald_outbox_depth", "Outbox rows not yet relayed", registry=b)
        self.outbox_oldest_age = Gauge(
            "herald_outbox_oldest_age_seconds", "Age of the oldest outbox row", registry=b
        )
        self.deliveries_waiting = Gauge(
            "herald_deliveries_waiting",
            "Deliveries in a waiting state (queued, deferred, sending)",
            ["state"],
            registry=b,
        )
        self.deliveries_oldest_age = Gauge(
            "herald_deliveries_oldest_age_seconds",
            "Time since the oldest delivery in the state entered it",
            ["state"],
            registry=b,
        )
        self.scheduler_lag = Gauge(
            "herald_scheduler_lag_seconds",
            "How far past its due time the most overdue deferred delivery is",
            registry=b,
        )
        self.workflow_timers_due = Gauge(
            "herald_workflow_timers_due",
            "Workflow runs whose timer is due and not taken by a scheduler",
            registry=b,
        )
        self.workflow_timers_overdue = Gauge(
            "herald_workflow_timers_overdue_seconds",
            "How far past its due time the most overdue workflow timer is",
            registry=b,
        )


METRICS = Metrics()
