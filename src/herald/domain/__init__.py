"""Herald's domain: plain typed code, no framework imports."""

from herald.domain.channels import (
    ALL_CHANNELS,
    DEFAULT_POLICY,
    Channel,
    DeliveryPolicy,
    Platform,
    Priority,
    QuietHoursAction,
)
from herald.domain.deliveries import (
    CLAIMABLE_STATES,
    FINAL_STATES,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    InvalidTransition,
    can_transition,
    check_transition,
    delivery_id,
    mask_target,
)
from herald.domain.notifications import Notification, NotificationState
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.domain.preferences import (
    CategorySettings,
    ChannelDecision,
    Preferences,
    Verdict,
    decide_channels,
    default_category,
)
from herald.domain.quiet_hours import QuietHours, next_occurrence, parse_wall_time
from herald.domain.users import Device, User

__all__ = [
    "ALL_CHANNELS",
    "CLAIMABLE_STATES",
    "DEFAULT_POLICY",
    "FINAL_STATES",
    "Accepted",
    "CategorySettings",
    "Channel",
    "ChannelDecision",
    "Delivery",
    "DeliveryEvent",
    "DeliveryPolicy",
    "DeliveryState",
    "Device",
    "InvalidTarget",
    "InvalidTransition",
    "Notification",
    "NotificationState",
    "Outcome",
    "Platform",
    "Preferences",
    "Priority",
    "ProviderDown",
    "QuietHours",
    "QuietHoursAction",
    "Rejected",
    "Retry",
    "User",
    "Verdict",
    "can_transition",
    "check_transition",
    "decide_channels",
    "default_category",
    "delivery_id",
    "mask_target",
    "next_occurrence",
    "parse_wall_time",
]
