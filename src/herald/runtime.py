"""Wiring: the components one Herald process builds from its settings."""

from __future__ import annotations

import asyncio
import functools
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from herald.api.limits import TenantLimits
from herald.bus.interface import Bus
from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.retry import RetryPolicy
from herald.domain.tracking import TrackedLinks
from herald.live import LiveHub, LocalHub, PostgresHub
from herald.ops_server import BacklogGauges
from herald.providers.callbacks import WebhookConfig
from herald.providers.email_layout import EmailBranding, compose_html
from herald.providers.registry import ProviderSet, build_providers
from herald.relay import Relay
from herald.router.planner import EmailExtras
from herald.router.router import Router
from herald.scheduler import Scheduler
from herald.security import Signer
from herald.storage import PlanMode, Storage, open_storage
from herald.wakeups import PgDoorbell, PgListener
from herald.workers.worker import WorkerSettings
from herald.workflows.runner import WorkflowRunner

UNSUBSCRIBE_TTL = timedelta(days=60)
TRACKING_TTL = timedelta(days=365)


def make_bus(settings: Settings) -> Bus:
    if settings.kafka_bootstrap:
        from herald.bus.kafka import KafkaBus

        return KafkaBus(
            settings.kafka_bootstrap,
            partitions=settings.kafka_partitions,
            topic_prefix=settings.kafka_topic_prefix,
            commit_interval_ms=settings.kafka_commit_interval_ms,
        )
    from herald.bus.memory import MemoryBus

    return MemoryBus()


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    bus: Bus
    hub: LiveHub
    clock: Clock = SYSTEM_CLOCK
    signer: Signer = field(default_factory=lambda: Signer(secrets.token_urlsafe(32)))
    providers: ProviderSet | None = None
    relay: Relay | None = None
    webhook_config: WebhookConfig | None = None
    limits: TenantLimits | None = None
    # Wakes the relays of other processes (PostgreSQL): herald.wakeups.
    outbox_bell: PgDoorbell | None = None
    # Set in the processes that report the backlog at /metrics (herald.ops_server).
    backlog_gauges: BacklogGauges | None = None
    # Set when the API stops serving: endless responses (event streams) end.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def end_streams(self) -> None:
        """The API is stopping: every event stream ends (its client reconnects, with
        Last-Event-ID, to this process restarted or to another)."""
        self.stopping.set()
        self.hub.end_streams()

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = TenantLimits(
                self.clock, self.settings.api_requests_per_s, self.settings.api_notifications_per_s
            )

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Runtime:
        storage = open_storage(
            settings.effective_database_url,
            clock,
            retention_days=settings.events_retention_days,
            plans=_plan_mode(settings),
        )
        hub: LiveHub = (
            PostgresHub(_asyncpg_dsn(settings.effective_database_url))
            if settings.uses_postgres
            else LocalHub()
        )
        bell = (
            PgDoorbell(_asyncpg_dsn(settings.effective_database_url))
            if settings.uses_postgres
            else None
        )
        return cls(
            settings=settings,
            storage=storage,
            bus=make_bus(settings),
            hub=hub,
            clock=clock,
            outbox_bell=bell,
        )

    async def start(self, *, migrate: bool = True) -> None:
        """Connect to the database and the bus (and create the schema when asked)."""
        if migrate:
            await self.storage.database.migrate()
        await self.storage.scheduling.maintain()
        secret = self.settings.secret_key or await self.storage.keys.get_or_create_setting(
            "secret_key", lambda: secrets.token_urlsafe(32)
        )
        self.signer = Signer(secret)
        await self.bus.start()
        if isinstance(self.hub, PostgresHub):
            await self.hub.start()

    def build_providers(self) -> ProviderSet:
        if self.providers is None:
            self.providers = build_providers(self.settings, self.storage, self.hub, self.clock)
        return self.providers

    def worker_settings(self) -> WorkerSettings:
        s = self.settings
        return WorkerSettings(
            lease_seconds=s.lease_seconds,
            retry=RetryPolicy(s.max_attempts, s.retry_base_seconds, s.retry_max_seconds),
            circuit_cooldown_seconds=s.circuit_cooldown_seconds,
            rate_limits=dict(s.rate_limits),
        )

    def unsubscribe_url(self, user_id: str, category: str) -> str:
        token = self.signer.sign(
            "unsubscribe", user_id, self.clock.now() + UNSUBSCRIBE_TTL, cat=category
        )
        return f"{self.settings.effective_public_url}/v1/unsubscribe?token={token}"

    def preferences_url(self, user_id: str, category: str) -> str:
        """The preference center's link for an email's footer (signed, expiring)."""
        token = self.signer.sign(
            "preferences", user_id, self.clock.now() + UNSUBSCRIBE_TTL, cat=category
        )
        return f"{self.settings.effective_public_url}/preferences?token={token}"

    def router(self) -> Router:
        return Router(
            self.storage.routing,
            self.storage.broadcasts,
            self.bus,
            self.clock,
            EmailExtras(
                self.unsubscribe_url,
                self.preferences_url,
                self.email_links,
                functools.partial(
                    compose_html, branding=EmailBranding.from_settings(self.settings)
                ),
            ),
            on_outbox=self.wake_relay,
            workflows=self.storage.workflows,
        )

    def email_links(self, delivery_id: str) -> TrackedLinks:
        """A delivery's signed open-pixel and click-redirect URLs (herald.api.routes.
        engagement serves them)."""
        base = f"{self.settings.effective_public_url}/v1/track"
        expires = self.clock.now() + TRACKING_TTL
        opened = self.signer.sign("track-open", delivery_id, expires)

        def click(url: str) -> str:
            token = self.signer.sign("track-click", delivery_id, expires, url=url)
            return f"{base}/click/{token}"

        return TrackedLinks(f"{base}/open/{opened}.gif", click)

    def scheduler(self) -> Scheduler:
        return Scheduler(
            self.storage.scheduling,
            self.bus,
            self.clock,
            stale_after_seconds=self.settings.sweep_stale_after_seconds,
            on_outbox=self.wake_relay,
            workflows=self.workflow_runner(),
        )

    def workflow_runner(self) -> WorkflowRunner:
        return WorkflowRunner(
            self.storage.workflow_timers,
            self.clock,
            lease_seconds=self.settings.lease_seconds,
            on_outbox=self.wake_relay,
        )

    def make_relay(self) -> Relay:
        if self.relay is None:
            listener = None
            if self.settings.uses_postgres:
                listener = PgListener(_asyncpg_dsn(self.settings.effective_database_url))
            self.relay = Relay(
                self.storage.outbox,
                self.bus,
                wake_source=listener,
                linger_seconds=self.settings.relay_linger_ms / 1000,
            )
        return self.relay

    def wake_relay(self) -> None:
        """Outbox rows were committed: wake the relay in this process, or (PostgreSQL)
        the relays of the others."""
        if self.relay is not None:
            self.relay.wakeup.set()
        elif self.outbox_bell is not None:
            self.outbox_bell.ring()

    async def close(self) -> None:
        if self.providers is not None:
            await self.providers.close()
        await self.bus.close()
        await self.hub.close()
        if self.outbox_bell is not None:
            await self.outbox_bell.close()
        await self.storage.database.close()


def _plan_mode(settings: Settings) -> PlanMode:
    # "auto" is resolved by the role's process (herald.process.run); anything else that
    # opens a runtime (tests, tools) plans per execution.
    plans = settings.postgres_plans
    return PlanMode.PER_EXECUTION if plans == "auto" else PlanMode(plans)


def _asyncpg_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]
