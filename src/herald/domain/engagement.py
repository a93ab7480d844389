"""Engagement: what the recipient did with a delivery. The first report of each kind is
kept on the delivery (its `<kind>_at`) and written to the delivery log; repeats change
nothing."""

from __future__ import annotations

from enum import StrEnum

from herald.domain.deliveries import DeliveryState


class Engagement(StrEnum):
    OPENED = "opened"
    CLICKED = "clicked"
    DISMISSED = "dismissed"
    READ = "read"  # an in-app item marked read in the inbox


# What an app reports for a push (POST /v1/deliveries/{id}/engagement).
APP_REPORTS: frozenset[Engagement] = frozenset(
    {Engagement.OPENED, Engagement.CLICKED, Engagement.DISMISSED}
)


def engagement_column(kind: Engagement) -> str:
    """The delivery column holding the time of the first report of `kind`."""
    return f"{kind.value}_at"


def log_state(value: str) -> DeliveryState | Engagement:
    """A delivery log entry's state: a delivery state, or an engagement report."""
    try:
        return DeliveryState(value)
    except ValueError:
        return Engagement(value)
