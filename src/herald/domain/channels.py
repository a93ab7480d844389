"""Channels, platforms, priorities and delivery policies."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"
    IN_APP = "in_app"


ALL_CHANNELS: tuple[Channel, ...] = tuple(Channel)


class Platform(StrEnum):
    ANDROID = "android"
    IOS = "ios"
    WEB = "web"


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class DeliveryPolicy(StrEnum):
    """What a worker does with a delivery whose lease expired mid-send.

    at_least_once sends again (a repeat may reach the device, where the collapse key folds
    it); at_most_once marks it unknown and never sends again (SMS costs money).
    """

    AT_LEAST_ONCE = "at_least_once"
    AT_MOST_ONCE = "at_most_once"


DEFAULT_POLICY: dict[Channel, DeliveryPolicy] = {
    Channel.PUSH: DeliveryPolicy.AT_LEAST_ONCE,
    Channel.IN_APP: DeliveryPolicy.AT_LEAST_ONCE,
    Channel.EMAIL: DeliveryPolicy.AT_LEAST_ONCE,
    Channel.SMS: DeliveryPolicy.AT_MOST_ONCE,
}


class QuietHoursAction(StrEnum):
    DEFER = "defer"
    DROP = "drop"
    IGNORE = "ignore"
