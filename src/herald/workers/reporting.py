"""What a worker says about the outcomes it recorded: the count of deliveries by their final
state, the time from acceptance to the provider, and log lines an operator can follow any
delivery by.

A batch's deliveries that the provider took (`sent`, `delivered`) are one INFO line per
provider and state, naming every delivery and notification; anything else (a retry, a
failure, a dead target) is one line per delivery with its error. Rendering a log line costs
about as much as the rest of a delivery's work in the worker, so at thousands a second a line
per sent delivery was the largest single cost of the outcome path (docs/benchmarks.md,
"Figures behind code choices")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

import structlog

from herald.domain import Channel, DeliveryState
from herald.domain.deliveries import FINAL_STATES, HANDED_OVER_STATES, Delivery
from herald.metrics import METRICS
from herald.storage import DeliveryUpdate

log = structlog.get_logger("herald.deliveries")
# The worker's last word on a delivery: a webhook may still move `sent` to `delivered`.
COUNTED_STATES = FINAL_STATES | HANDED_OVER_STATES


def report_outcomes(
    channel: Channel,
    updates: Sequence[DeliveryUpdate],
    claimed: Mapping[str, Delivery],
    now: datetime,
) -> None:
    handed_over: dict[tuple[str, DeliveryState], list[DeliveryUpdate]] = defaultdict(list)
    for update in updates:
        if update.state in HANDED_OVER_STATES and update.last_error is None:
            handed_over[(update.provider or "none", update.state)].append(update)
        else:
            _log_one(channel, update, now)
    _count(channel, updates)
    _observe_accept_to_provider(channel, updates, claimed, now)
    for (provider, state), group in handed_over.items():
        durations = [d for u in group if (d := _since(now, u.claimed_at)) is not None]
        log.info(
            "deliveries handed over",
            channel=channel.value,
            provider=provider,
            state=state.value,
            count=len(group),
            delivery_ids=[u.delivery_id for u in group],
            notification_ids=[u.notification_id for u in group],
            attempts=[u.attempt for u in group],
            max_duration_ms=max(durations) if durations else None,
        )


def _log_one(channel: Channel, update: DeliveryUpdate, now: datetime) -> None:
    log.info(
        "delivery outcome",
        notification_id=update.notification_id,
        delivery_id=update.delivery_id,
        channel=channel.value,
        provider=update.provider,
        state=update.state.value,
        attempt=update.attempt,
        duration_ms=_since(now, update.claimed_at),
        error=update.last_error,
        retry_at=update.due_at.isoformat()
        if update.state == DeliveryState.DEFERRED and update.due_at
        else None,
    )


def _count(channel: Channel, updates: Sequence[DeliveryUpdate]) -> None:
    """One increment per provider and state, not per delivery."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for update in updates:
        if update.state in COUNTED_STATES:
            counts[(update.provider or "none", update.state.value)] += 1
    for (provider, state), n in counts.items():
        METRICS.deliveries_finished.labels(channel.value, provider, state).inc(n)


def _observe_accept_to_provider(
    channel: Channel,
    updates: Sequence[DeliveryUpdate],
    claimed: Mapping[str, Delivery],
    now: datetime,
) -> None:
    by_provider: dict[str, list[float]] = defaultdict(list)
    for update in updates:
        delivery = claimed.get(update.delivery_id)
        if update.state in HANDED_OVER_STATES and delivery and delivery.created_at:
            seconds = max(0.0, (now - delivery.created_at).total_seconds())
            by_provider[update.provider or "none"].append(seconds)
    for provider, values in by_provider.items():
        histogram = METRICS.accept_to_provider_seconds.labels(channel.value, provider)
        for seconds in values:
            histogram.observe(seconds)


def _since(now: datetime, claimed_at: datetime | None) -> float | None:
    return round((now - claimed_at).total_seconds() * 1000, 1) if claimed_at else None
