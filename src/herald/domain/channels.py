"""Channels, platforms, priorities and delivery policies."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"
    IN_APP = "in_app"
    # Addresses a user is given through PUT /v1/users/{id}/channels/{kind} (ChannelAddress).
    WEBHOOK = "webhook"
    CHAT = "chat"  # Slack, Microsoft Teams, Discord
    WHATSAPP = "whatsapp"


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
    # A webhook repeat carries the same webhook-id, which receivers deduplicate on.
    Channel.WEBHOOK: DeliveryPolicy.AT_LEAST_ONCE,
    # A chat post or a WhatsApp message cannot be folded: a repeat is seen (and paid) twice.
    Channel.CHAT: DeliveryPolicy.AT_MOST_ONCE,
    Channel.WHATSAPP: DeliveryPolicy.AT_MOST_ONCE,
}


class QuietHoursAction(StrEnum):
    DEFER = "defer"
    DROP = "drop"
    IGNORE = "ignore"


class AddressKind(StrEnum):
    """What a user's channel address is: the path segment of /v1/users/{id}/channels/{kind}."""

    WEBHOOK = "webhook"
    SLACK = "slack"
    TEAMS = "teams"
    DISCORD = "discord"
    WHATSAPP = "whatsapp"

    @property
    def channel(self) -> Channel:
        return ADDRESS_CHANNEL[self]


ADDRESS_CHANNEL: dict[AddressKind, Channel] = {
    AddressKind.WEBHOOK: Channel.WEBHOOK,
    AddressKind.SLACK: Channel.CHAT,
    AddressKind.TEAMS: Channel.CHAT,
    AddressKind.DISCORD: Channel.CHAT,
    AddressKind.WHATSAPP: Channel.WHATSAPP,
}
ADDRESS_CHANNELS = frozenset(ADDRESS_CHANNEL.values())
