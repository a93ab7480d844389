"""What a worker says about each recorded outcome: one INFO line per delivery (an operator
can follow any delivery by its id), the count of deliveries by their final state and the
time from acceptance to the provider."""

from __future__ import annotations

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
    for update in updates:
        delivery = claimed.get(update.delivery_id)
        provider = update.provider or "none"
        if update.state in COUNTED_STATES:
            METRICS.deliveries_finished.labels(channel.value, provider, update.state.value).inc()
        created = delivery.created_at if delivery else None
        if update.state in HANDED_OVER_STATES and created is not None:
            METRICS.accept_to_provider_seconds.labels(channel.value, provider).observe(
                max(0.0, (now - created).total_seconds())
            )
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


def _since(now: datetime, claimed_at: datetime | None) -> float | None:
    return round((now - claimed_at).total_seconds() * 1000, 1) if claimed_at else None
