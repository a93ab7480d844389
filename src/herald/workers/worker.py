"""The channel worker: claim → provider → record.

For a batch from `herald.deliveries.<channel>`:
1. claim the named deliveries with one atomic statement and a lease (store.claim_deliveries);
   whatever is not claimable was handled already and is skipped;
2. hand each claimed delivery to its provider (failover order, circuits, rate limits);
3. record every outcome with its event in one transaction, deactivate dead devices,
   suppress dead addresses;
4. commit the batch on the bus.
A crash between 1 and 3 leaves deliveries `sending` with a lease; the scheduler applies
the channel's policy when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from herald.bus.interface import LANES, Bus, Lane, Message, deliveries_topic, lane_for
from herald.bus.messages import dead_letter_record, ids_in
from herald.clock import Clock
from herald.domain import (
    Accepted,
    Channel,
    Delivery,
    DeliveryState,
    InvalidTarget,
    Outcome,
    ProviderDown,
    Rejected,
    Retry,
)
from herald.domain.retry import RetryPolicy
from herald.metrics import METRICS
from herald.providers.base import OutboundMessage, Provider
from herald.providers.registry import ProviderSet
from herald.roles import PRIORITY_BATCH_SIZE, consume_loop
from herald.storage import DeliveryUpdate, Store
from herald.workers.circuit import CircuitBreaker
from herald.workers.ratelimit import TokenBucket

log = structlog.get_logger()
S = DeliveryState


@dataclass
class WorkerSettings:
    lease_seconds: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit_cooldown_seconds: float = 30.0
    rate_limits: dict[str, float] = field(default_factory=dict)
    batch_size: int = 500


@dataclass
class _Attempt:
    """One claimed delivery on its way through the providers."""

    delivery: Delivery
    remaining: list[Provider]
    tried: list[str] = field(default_factory=list)


def outbound(delivery: Delivery) -> OutboundMessage:
    payload = {k: v for k, v in delivery.payload.items() if not k.startswith("_")}
    return OutboundMessage(
        delivery_id=delivery.id,
        notification_id=delivery.notification_id,
        user_id=delivery.user_id,
        channel=delivery.channel,
        target=delivery.target,
        payload=payload,
        priority=delivery.priority,
        category=delivery.category,
        platform=delivery.platform,
        subscription=delivery.payload.get("_subscription"),
        collapse_key=delivery.payload.get("_collapse_key"),
        expires_at=delivery.expires_at,
        attempt=delivery.attempts,
    )


def outcome_name(outcome: Outcome) -> str:
    return {
        Accepted: "accepted",
        Retry: "retry",
        InvalidTarget: "invalid_target",
        Rejected: "rejected",
        ProviderDown: "provider_down",
    }[type(outcome)]


class ChannelWorker:
    def __init__(
        self,
        channel: Channel,
        store: Store,
        bus: Bus,
        providers: ProviderSet,
        clock: Clock,
        settings: WorkerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.channel = channel
        self.store = store
        self.bus = bus
        self.providers = providers
        self.clock = clock
        self.settings = settings or WorkerSettings()
        self.circuits = CircuitBreaker(clock, self.settings.circuit_cooldown_seconds)
        self.rng = rng or random.Random()
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def group(self) -> str:
        return f"herald.worker.{self.channel}"

    async def run(self, stop: asyncio.Event, lanes: Sequence[Lane] = LANES) -> None:
        """One consumer per lane: priority messages never wait behind a bulk backlog. A
        process given only the priority lane is a dedicated pool for urgent traffic."""
        async with asyncio.TaskGroup() as group:
            for lane in lanes:
                group.create_task(
                    consume_loop(
                        self.bus,
                        [deliveries_topic(self.channel, lane)],
                        f"{self.group}.{lane}",
                        self.handle,
                        stop,
                        batch_size=self.settings.batch_size
                        if lane == Lane.BULK
                        else PRIORITY_BATCH_SIZE,
                        name=f"worker.{self.channel}.{lane}",
                        set_aside=self.set_aside,
                    )
                )

    async def set_aside(self, message: Message, reason: str) -> None:
        """A delivery this worker cannot process: failed, with the reason in its log."""
        await self.store.set_aside_deliveries(
            ids_in([message], "delivery_id"), f"could not be processed: {reason}"
        )

    async def handle(self, messages: Sequence[Message]) -> None:
        await self.process(ids_in(messages, "delivery_id"))

    async def process(self, delivery_ids: Sequence[str]) -> list[DeliveryUpdate]:
        claimed = await self.store.claim_deliveries(delivery_ids, self.settings.lease_seconds)
        METRICS.claimed.labels(self.channel.value).inc(len(claimed))
        METRICS.claim_lost.labels(self.channel.value).inc(len(delivery_ids) - len(claimed))
        now = self.clock.now()
        updates: list[DeliveryUpdate] = []
        live: list[_Attempt] = []
        for delivery in claimed:
            if delivery.expires_at is not None and delivery.expires_at <= now:
                updates.append(_final(delivery, S.FAILED, None, "expired before it could be sent"))
            else:
                live.append(_Attempt(delivery, list(self.providers.candidates(delivery))))
        async with self._renewing([d.id for d in claimed]):
            updates.extend(await self._send_all(live))
            await self._record(updates, claimed)
        return updates

    @contextlib.asynccontextmanager
    async def _renewing(self, delivery_ids: list[str]) -> AsyncIterator[None]:
        """Renew the claimed deliveries' leases until their outcomes are recorded: only a
        worker that died lets a lease run out, not a slow provider or a long batch."""
        if not delivery_ids:
            yield
            return
        task = asyncio.create_task(self._renew(delivery_ids))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew(self, delivery_ids: list[str]) -> None:
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.extend_leases(delivery_ids, self.settings.lease_seconds)
            except Exception as error:  # the database may be restarting: try again
                log.warning("renewing leases failed", error=str(error), count=len(delivery_ids))

    async def _record_outcomes(self, updates: list[DeliveryUpdate]) -> None:
        """The provider has answered: losing that answer to a database blip would send
        again (at_least_once) or leave `unknown` (at_most_once), so keep trying a while."""
        delay = 0.1
        deadline = time.monotonic() + max(30.0, 10 * self.settings.lease_seconds)
        while True:
            try:
                await self.store.record_outcomes(updates)
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    raise
                log.warning("recording outcomes failed; retrying", error=str(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _send_all(self, attempts: list[_Attempt]) -> list[DeliveryUpdate]:
        """Send through each delivery's providers in failover order until one gives a
        verdict that is not 'try elsewhere'."""
        updates: list[DeliveryUpdate] = []
        pending = attempts
        while pending:
            by_provider: dict[int, list[_Attempt]] = defaultdict(list)
            providers: dict[int, Provider] = {}
            for attempt in pending:
                provider = self._next_open_provider(attempt)
                if provider is None:
                    updates.append(self._wait_for_circuit(attempt))
                    continue
                by_provider[id(provider)].append(attempt)
                providers[id(provider)] = provider
            pending = []
            results = await asyncio.gather(
                *(self._send(providers[key], group) for key, group in by_provider.items())
            )
            for group_updates, failed_over in results:
                updates.extend(group_updates)
                pending.extend(failed_over)
        return updates

    def _next_open_provider(self, attempt: _Attempt) -> Provider | None:
        while attempt.remaining:
            provider = attempt.remaining.pop(0)
            if not self.circuits.is_open(provider.name):
                return provider
            attempt.tried.append(f"{provider.name}: circuit open")
        return None

    def _wait_for_circuit(self, attempt: _Attempt) -> DeliveryUpdate:
        """Every provider is down: the delivery waits for the first circuit to half-open,
        and the attempt does not count against its retry budget."""
        candidates = self.providers.candidates(attempt.delivery)
        wait = min((self.circuits.remaining(p.name) for p in candidates), default=0.0)
        return DeliveryUpdate(
            attempt.delivery.id,
            attempt.delivery.notification_id,
            S.DEFERRED,
            last_error="; ".join(attempt.tried) or "provider down",
            due_at=self.clock.now() + _seconds(max(wait, 1.0)),
            attempts_refund=True,
            detail={"reason": "all providers down"},
        )

    async def _send(
        self, provider: Provider, attempts: list[_Attempt]
    ) -> tuple[list[DeliveryUpdate], list[_Attempt]]:
        updates: list[DeliveryUpdate] = []
        failed_over: list[_Attempt] = []
        for start in range(0, len(attempts), provider.batch_size):
            chunk = attempts[start : start + provider.batch_size]
            outcomes = await self._call(provider, chunk)
            for attempt, outcome in zip(chunk, outcomes, strict=True):
                METRICS.outcomes.labels(
                    self.channel.value, provider.name, outcome_name(outcome)
                ).inc()
                update = self._verdict(provider, attempt, outcome)
                if update is None:
                    failed_over.append(attempt)
                else:
                    updates.append(update)
        return updates, failed_over

    async def _call(self, provider: Provider, chunk: list[_Attempt]) -> list[Outcome]:
        if self._rate(provider):
            urgent = any(lane_for(a.delivery.priority) == Lane.PRIORITY for a in chunk)
            await self._bucket(provider).acquire(len(chunk), urgent=urgent)
        started = time.perf_counter()
        try:
            outcomes = await provider.send([outbound(a.delivery) for a in chunk])
        except Exception as error:  # a provider bug must not lose the batch
            log.exception("provider raised instead of answering", provider=provider.name)
            outcomes = [Retry(f"provider error: {type(error).__name__}: {error}")] * len(chunk)
        METRICS.send_seconds.labels(provider.name).observe(time.perf_counter() - started)
        if len(outcomes) != len(chunk):
            log.error("provider answered the wrong number of outcomes", provider=provider.name)
            outcomes = [Retry("provider answered the wrong number of outcomes")] * len(chunk)
        if any(not isinstance(o, ProviderDown) for o in outcomes):
            self.circuits.close(provider.name)
        return outcomes

    def _rate(self, provider: Provider) -> float | None:
        return self.settings.rate_limits.get(provider.name, provider.default_rate_per_s)

    def _bucket(self, provider: Provider) -> TokenBucket:
        if provider.name not in self._buckets:
            rate = self._rate(provider)
            assert rate is not None
            self._buckets[provider.name] = TokenBucket(rate, self.clock)
        return self._buckets[provider.name]

    def _verdict(
        self, provider: Provider, attempt: _Attempt, outcome: Outcome
    ) -> DeliveryUpdate | None:
        """The delivery's next state for this outcome; None means 'fail over to the next
        provider' (the attempt on this one is kept in the log)."""
        delivery = attempt.delivery
        name = provider.name
        match outcome:
            case Accepted(message_id, delivered):
                state = S.DELIVERED if delivered else S.SENT
                return _final(delivery, state, name, None, message_id, attempt.tried)
            case InvalidTarget(reason, opt_out):
                return _final(
                    delivery, S.UNDELIVERABLE, name, reason, None, attempt.tried, opt_out=opt_out
                )
            case Rejected(reason):
                return _final(delivery, S.FAILED, name, reason, None, attempt.tried)
            case ProviderDown(reason, retry_after):
                self.circuits.open(name, reason, retry_after)
                attempt.tried.append(f"{name}: provider down: {reason}")
                if attempt.remaining:
                    return None
                return self._wait_for_circuit(attempt)
            case Retry(reason, after):
                return self._retry(provider, attempt, reason, after)
        raise AssertionError(f"unknown outcome {outcome!r}")

    def _retry(
        self, provider: Provider, attempt: _Attempt, reason: str, after: float | None
    ) -> DeliveryUpdate | None:
        delivery = attempt.delivery
        now = self.clock.now()
        at = self.settings.retry.next_attempt_at(
            now, delivery.attempts, after, delivery.expires_at, self.rng
        )
        if at is None and attempt.remaining:
            attempt.tried.append(f"{provider.name}: retries used up: {reason}")
            return None
        if at is None:
            return _final(
                delivery,
                S.FAILED,
                provider.name,
                f"dead-lettered after {delivery.attempts} attempts: {reason}",
                None,
                attempt.tried,
                dead_letter=True,
            )
        return DeliveryUpdate(
            delivery.id,
            delivery.notification_id,
            S.DEFERRED,
            provider=provider.name,
            last_error=reason,
            due_at=at,
            detail={
                "retry_in_s": round((at - now).total_seconds(), 3),
                "attempt": delivery.attempts,
            },
        )

    async def _record(self, updates: list[DeliveryUpdate], claimed: list[Delivery]) -> None:
        await self._record_outcomes(updates)
        by_id = {d.id: d for d in claimed}
        dead = [
            dead_letter_record(
                u.delivery_id, by_id[u.delivery_id].user_id, self.channel, u.last_error or ""
            )
            for u in updates
            if u.detail.get("dead_lettered")
        ]
        if dead:
            log.warning("deliveries dead-lettered", channel=self.channel.value, count=len(dead))
            await self.bus.publish(dead)
        dead_devices: dict[str, str] = {}
        for update in updates:
            if update.state != S.UNDELIVERABLE:
                continue
            delivery = by_id[update.delivery_id]
            reason = update.last_error or "invalid target"
            if delivery.channel == Channel.PUSH:
                dead_devices[delivery.target_ref] = reason
            elif delivery.channel in (Channel.EMAIL, Channel.SMS):
                why = "opt-out (STOP)" if update.detail.get("opt_out") else reason
                await self.store.add_suppression(delivery.channel.value, delivery.target, why)
        if dead_devices:
            log.info("deactivating dead device tokens", count=len(dead_devices))
            await self.store.deactivate_devices(dead_devices)


def _final(
    delivery: Delivery,
    state: DeliveryState,
    provider: str | None,
    error: str | None,
    message_id: str | None = None,
    tried: Sequence[str] = (),
    *,
    opt_out: bool = False,
    dead_letter: bool = False,
) -> DeliveryUpdate:
    detail: dict[str, object] = {}
    if dead_letter:
        detail["dead_lettered"] = True
    if tried:
        detail["failed_over_from"] = list(tried)
    if opt_out:
        detail["opt_out"] = True
    return DeliveryUpdate(
        delivery.id,
        delivery.notification_id,
        state,
        provider=provider,
        provider_message_id=message_id,
        last_error=error,
        detail=detail,
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
