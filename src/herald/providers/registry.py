"""Which provider serves which delivery: built once from the settings.

Push goes by platform (android to FCM, ios to APNs, web to Web Push); email and SMS go to
their configured providers in failover order (by default every one whose credentials are
given); in-app goes to the inbox. Webhook and chat addresses need no credentials of ours
(the address is the credential): webhook goes to the webhook provider, chat by the
address's service (Slack, Teams, Discord); WhatsApp goes to Twilio's when configured.
Anything without credentials goes to the sandbox, unless
HERALD_REFUSE_SANDBOX says that is a configuration error.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import ConfigurationError, Settings
from herald.domain import Channel, Delivery, Platform
from herald.live import LiveHub
from herald.providers.base import Provider
from herald.providers.chat import CHAT_SERVICES
from herald.providers.inbox import InboxProvider
from herald.providers.sandbox import SandboxProvider
from herald.storage import Storage

PUSH_BY_PLATFORM = {Platform.ANDROID: "fcm", Platform.IOS: "apns", Platform.WEB: "webpush"}
KNOWN = {
    Channel.EMAIL: ("smtp", "ses", "sendgrid"),
    Channel.SMS: ("twilio",),
}


SANDBOX = "sandbox"
# Channels whose sandbox never serves an address: chat deliveries always name their service,
# and the API refuses a WhatsApp address when WhatsApp is not configured.
_NEVER_REFUSED = frozenset({Channel.PUSH, Channel.CHAT, Channel.WHATSAPP})


class UnknownProvider(ConfigurationError):
    pass


def provider_class(name: str) -> type[Provider]:
    """The Provider subclass in herald.providers.<name> whose `name` is `name`."""
    module = importlib.import_module(f"herald.providers.{name}")
    for value in vars(module).values():
        is_provider = isinstance(value, type) and issubclass(value, Provider)
        if is_provider and value is not Provider and getattr(value, "name", None) == name:
            found: type[Provider] = value
            return found
    raise UnknownProvider(f"herald.providers.{name} defines no provider named {name!r}")


def _configured(name: str, settings: Settings, clock: Clock) -> Provider | None:
    factory = getattr(provider_class(name), "from_settings", None)
    if factory is None:
        return None
    try:
        provider: Provider | None = factory(settings, clock)
    except (OSError, ValueError, KeyError, TypeError) as error:
        # An unreadable key file, a malformed credential: one line naming the provider.
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ConfigurationError(f"the {name} provider cannot be configured: {detail}") from None
    return provider


@dataclass
class ProviderSet:
    by_channel: dict[Channel, list[Provider]] = field(default_factory=dict)
    push_by_platform: dict[str, list[Provider]] = field(default_factory=dict)
    chat_by_service: dict[str, list[Provider]] = field(default_factory=dict)

    def candidates(self, delivery: Delivery) -> list[Provider]:
        """Providers for this delivery, in failover order."""
        if delivery.channel == Channel.PUSH:
            return self.push_by_platform.get(delivery.platform or "", self.by_channel[Channel.PUSH])
        if delivery.channel == Channel.CHAT:
            return self.chat_by_service.get(delivery.platform or "", self.by_channel[Channel.CHAT])
        return self.by_channel[delivery.channel]

    def all(self) -> list[Provider]:
        seen: dict[int, Provider] = {}
        everything = [
            *self.by_channel.values(),
            *self.push_by_platform.values(),
            *self.chat_by_service.values(),
        ]
        for providers in everything:
            for provider in providers:
                seen[id(provider)] = provider
        return list(seen.values())

    async def start(self) -> None:
        for provider in self.all():
            await provider.start()

    async def close(self) -> None:
        for provider in self.all():
            await provider.close()

    def sandboxed(self) -> list[str]:
        """The channels (push by platform) that would go to the sandbox provider."""
        found = [
            f"push ({platform})"
            for platform, providers in self.push_by_platform.items()
            if any(isinstance(p, SandboxProvider) for p in providers)
        ]
        found += [
            channel.value
            for channel, providers in self.by_channel.items()
            if channel not in _NEVER_REFUSED
            and any(isinstance(p, SandboxProvider) for p in providers)
        ]
        return found

    def describe(self) -> dict[str, str]:
        lines = {
            str(channel): ", ".join(p.describe() for p in providers)
            for channel, providers in self.by_channel.items()
            if channel not in (Channel.PUSH, Channel.CHAT)
        }
        lines["chat"] = ", ".join(
            provider.describe() for chosen in self.chat_by_service.values() for provider in chosen
        )
        lines["push"] = "; ".join(
            f"{platform} → {', '.join(p.describe() for p in providers)}"
            for platform, providers in self.push_by_platform.items()
        )
        return lines


def build_providers(
    settings: Settings, storage: Storage, hub: LiveHub, clock: Clock = SYSTEM_CLOCK
) -> ProviderSet:
    providers = ProviderSet()
    push_sandbox = SandboxProvider(storage.sandbox, Channel.PUSH, clock)
    providers.by_channel[Channel.PUSH] = [push_sandbox]
    for platform, name in PUSH_BY_PLATFORM.items():
        real = _try_configured(name, settings, clock)
        providers.push_by_platform[platform.value] = [real] if real else [push_sandbox]
    for channel, names in (
        (Channel.EMAIL, settings.email_providers),
        (Channel.SMS, settings.sms_providers),
    ):
        chosen = []
        for name in names:
            if name == SANDBOX and len(names) == 1:
                break
            if name not in KNOWN[channel]:
                raise UnknownProvider(
                    f"unknown {channel} provider {name!r} in {_variable(channel)}; "
                    f"known: {', '.join(KNOWN[channel])} (or {SANDBOX} alone)"
                )
            provider = _configured(name, settings, clock)
            if provider is None:
                raise UnknownProvider(
                    f"{channel} provider {name!r} is named in {_variable(channel)} but not "
                    f"configured: set {_NEEDS[name]}"
                )
            chosen.append(provider)
        providers.by_channel[channel] = chosen or [SandboxProvider(storage.sandbox, channel, clock)]
    providers.by_channel[Channel.IN_APP] = [InboxProvider(storage.inbox, hub, clock)]
    _add_address_channels(providers, settings, storage, clock)
    if settings.refuse_sandbox:
        sandboxed = providers.sandboxed()
        if sandboxed:
            raise ConfigurationError(
                f"HERALD_REFUSE_SANDBOX is set and {', '.join(sandboxed)} would go to the "
                "sandbox provider (nothing sent): configure its provider"
            )
    return providers


def _add_address_channels(
    providers: ProviderSet, settings: Settings, storage: Storage, clock: Clock
) -> None:
    for name in ("webhook", *CHAT_SERVICES):
        provider = _configured(name, settings, clock)
        assert provider is not None  # they need no credentials
        if name == "webhook":
            providers.by_channel[Channel.WEBHOOK] = [provider]
        else:
            providers.chat_by_service[name] = [provider]
    # A chat delivery names its service; one that names none has no provider of its own.
    providers.by_channel[Channel.CHAT] = [SandboxProvider(storage.sandbox, Channel.CHAT, clock)]
    whatsapp = _configured("whatsapp", settings, clock)
    providers.by_channel[Channel.WHATSAPP] = [
        whatsapp or SandboxProvider(storage.sandbox, Channel.WHATSAPP, clock)
    ]


_NEEDS = {
    "smtp": "HERALD_SMTP_HOST",
    "ses": "HERALD_SES_REGION and AWS credentials",
    "sendgrid": "HERALD_SENDGRID_API_KEY",
    "twilio": "HERALD_TWILIO_ACCOUNT_SID, HERALD_TWILIO_AUTH_TOKEN and HERALD_TWILIO_FROM",
}


def _variable(channel: Channel) -> str:
    return f"HERALD_{channel.value.upper()}_PROVIDERS"


def _try_configured(name: str, settings: Settings, clock: Clock) -> Provider | None:
    try:
        return _configured(name, settings, clock)
    except ModuleNotFoundError:
        return None
