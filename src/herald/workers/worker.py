"""The channel worker: claim → provider → record.

For a batch from `herald.deliveries.<channel>`, in chunks (a few claimed at a time):
1. claim the chunk's deliveries with one atomic statement and a lease
   (DeliveryRepository.claim); whatever is not claimable was handled already and is skipped,
   and push deliveries whose device was deleted are skipped before the claim;
2. hand each claimed delivery to its provider (failover order, circuits, rate limits);
3. record each outcome as it arrives: a recorder writes them, with their events, every
   ~25 ms or every 200 outcomes, and deactivates dead devices, suppresses dead addresses;
4. commit the batch on the bus once the recorder has written everything.
A crash between 1 and 3 leaves deliveries `sending` with a lease; the scheduler applies
the channel's policy when the lease expires. Claiming in chunks (fewer for a rate-limited
provider) and recording as outcomes arrive keep that window, and so what a killed worker
leaves to be sent again (at_least_once) or `unknown` (at_most_once), small.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import structlog

from herald.bus.interface import LANES, Bus, Lane, Message, deliveries_topic, lane_for
from herald.bus.messages import dead_letter_record, ids_in
from herald.clock import Clock
from herald.domain import (
    ADDRESS_CHANNELS,
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
from herald.providers.base import OutboundMessage, Provider, WrongOutcomeCount
from herald.providers.registry import ProviderSet
from herald.roles import PRIORITY_BATCH_SIZE, consume_loop
from herald.storage import DeliveryUpdate
from herald.storage.deliveries import DeliveryRepository
from herald.workers.circuit import CircuitBreaker
from herald.workers.ratelimit import TokenBucket
from herald.workers.reporting import report_outcomes

log = structlog.get_logger()
S = DeliveryState


@dataclass
class WorkerSettings:
    lease_seconds: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit_cooldown_seconds: float = 30.0
    rate_limits: dict[str, float] = field(default_factory=dict)
    batch_size: int = 500
    # Waiting for an open circuit refunds the attempt, so a provider that stays down would
    # defer a delivery forever: it fails once its TTL passes, or this long after it was
    # created (the bound when it has no TTL).
    max_circuit_wait_seconds: float = 86_400.0
    # Deliveries claimed at a time: with a rate-limited provider, what the bucket lets
    # through in `claim_ahead_seconds`, so few wait claimed (a kill makes those `unknown`).
    claim_chunk: int = 100
    claim_ahead_seconds: float = 0.5
    # Outcomes are written every `record_interval_seconds` or `record_batch` outcomes.
    record_interval_seconds: float = 0.025
    record_batch: int = 200


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
        address=delivery.payload.get("_address"),
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
        deliveries: DeliveryRepository,
        bus: Bus,
        providers: ProviderSet,
        clock: Clock,
        settings: WorkerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.channel = channel
        self.deliveries = deliveries
        self.bus = bus
        self.providers = providers
        self.clock = clock
        self.settings = settings or WorkerSettings()
        self.circuits = CircuitBreaker(clock, self.settings.circuit_cooldown_seconds)
        self.rng = rng or random.Random()
        self._buckets: dict[str, TokenBucket] = {}
        for provider in self._channel_providers():  # a closed circuit shows as 0, not absent
            METRICS.circuit_open.labels(provider.name).set(0)

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
        await self.deliveries.set_aside(
            ids_in([message], "delivery_id"), f"could not be processed: {reason}"
        )

    async def handle(self, messages: Sequence[Message]) -> None:
        await self.process(ids_in(messages, "delivery_id"))

    async def process(self, delivery_ids: Sequence[str]) -> list[DeliveryUpdate]:
        """Claim, send and record `delivery_ids`; returns once every outcome is written."""
        recorder = _Recorder(self)
        window = self._claim_window()
        chunk = max(1, min(self.settings.claim_chunk, window))
        lanes = asyncio.Semaphore(max(1, window // chunk))

        async def one(ids: Sequence[str]) -> None:
            async with lanes:
                await self._process_chunk(ids, recorder)

        async with recorder:
            # Every chunk runs to its end even when another fails (a claim during a database
            # restart): what was sent is still recorded before the batch is given up.
            results = await asyncio.gather(
                *(one(delivery_ids[i : i + chunk]) for i in range(0, len(delivery_ids), chunk)),
                return_exceptions=True,
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return recorder.written

    def _claim_window(self) -> int:
        """How many deliveries may be claimed and not yet answered at once: a batch, or,
        when every provider of the channel is rate-limited, what the fastest of them sends
        in `claim_ahead_seconds`."""
        providers = {p.name: p for p in self._channel_providers()}.values()
        rates = [self._rate(p) for p in providers]
        if not rates or any(rate is None for rate in rates):
            return self.settings.batch_size
        fastest = max(rate for rate in rates if rate is not None)
        ahead = math.ceil(fastest * self.settings.claim_ahead_seconds)
        return max(1, min(self.settings.batch_size, ahead))

    def _channel_providers(self) -> list[Provider]:
        if self.channel == Channel.PUSH:
            return [p for ps in self.providers.push_by_platform.values() for p in ps]
        return list(self.providers.by_channel.get(self.channel, []))

    async def _process_chunk(self, delivery_ids: Sequence[str], recorder: _Recorder) -> None:
        claim = await self.deliveries.claim(
            delivery_ids, self.settings.lease_seconds, needs_device=self.channel == Channel.PUSH
        )
        claimed = claim.claimed
        if claim.skipped:
            log.info("skipped push deliveries whose device is gone", count=len(claim.skipped))
        METRICS.claimed.labels(self.channel.value).inc(len(claimed))
        METRICS.claim_lost.labels(self.channel.value).inc(
            len(delivery_ids) - len(claimed) - len(claim.skipped)
        )
        recorder.hold(claimed)
        now = self.clock.now()
        live: list[_Attempt] = []
        for delivery in claimed:
            if delivery.expires_at is not None and delivery.expires_at <= now:
                recorder.add(_final(delivery, S.FAILED, None, "expired before it could be sent"))
            elif delivery.attempts > self.settings.retry.max_attempts:
                # Claimed again and again without an outcome (each worker died on it, and
                # each lease expiry put it back): no retry loop runs without a bound.
                reason = f"dead-lettered after {delivery.attempts - 1} attempts without an answer"
                recorder.add(_final(delivery, S.FAILED, None, reason, dead_letter=True))
            else:
                live.append(_Attempt(delivery, list(self.providers.candidates(delivery))))
        await self._send_all(live, recorder)

    async def _renew(self, recorder: _Recorder) -> None:
        """Renew the leases of the claimed deliveries whose outcomes are not written yet:
        only a worker that died lets a lease run out, not a slow provider or a long batch."""
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            held = recorder.held_ids()
            if not held:
                continue
            try:
                await self.deliveries.extend_leases(held, self.settings.lease_seconds)
            except Exception as error:  # the database may be restarting: try again
                log.warning("renewing leases failed", error=str(error), count=len(held))

    async def _record_outcomes(self, updates: list[DeliveryUpdate]) -> None:
        """The provider has answered: losing that answer to a database blip would send
        again (at_least_once) or leave `unknown` (at_most_once), so keep trying a while."""
        delay = 0.1
        deadline = time.monotonic() + max(30.0, 10 * self.settings.lease_seconds)
        while True:
            try:
                await self.deliveries.record_outcomes(updates)
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    raise
                log.warning("recording outcomes failed; retrying", error=str(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _send_all(self, attempts: list[_Attempt], recorder: _Recorder) -> None:
        """Send through each delivery's providers in failover order until one gives a
        verdict that is not 'try elsewhere'; each verdict goes to the recorder at once."""
        pending = attempts
        while pending:
            by_provider: dict[int, list[_Attempt]] = defaultdict(list)
            providers: dict[int, Provider] = {}
            for attempt in pending:
                provider = self._next_open_provider(attempt)
                if provider is None:
                    recorder.add(self._wait_for_circuit(attempt))
                    continue
                by_provider[id(provider)].append(attempt)
                providers[id(provider)] = provider
            results = await asyncio.gather(
                *(self._send(providers[key], group, recorder) for key, group in by_provider.items())
            )
            pending = [attempt for failed_over in results for attempt in failed_over]

    def _next_open_provider(self, attempt: _Attempt) -> Provider | None:
        while attempt.remaining:
            provider = attempt.remaining.pop(0)
            if not self.circuits.is_open(provider.name):
                return provider
            attempt.tried.append(f"{provider.name}: circuit open")
        return None

    def _wait_for_circuit(self, attempt: _Attempt) -> DeliveryUpdate:
        """Every provider is down: the delivery waits for the first circuit to half-open,
        and the attempt does not count against its retry budget. The wait is bounded: past
        the delivery's TTL, or `max_circuit_wait_seconds` after it was created, it fails
        (and is dead-lettered) instead."""
        delivery = attempt.delivery
        candidates = self.providers.candidates(delivery)
        wait = max(1.0, min((self.circuits.remaining(p.name) for p in candidates), default=0.0))
        now = self.clock.now()
        due = now + _seconds(wait)
        reason = "; ".join(attempt.tried) or "provider down"
        limit = None
        if delivery.expires_at is not None and due >= delivery.expires_at:
            limit = "its TTL ran out"
        elif delivery.created_at is not None and due - delivery.created_at > _seconds(
            self.settings.max_circuit_wait_seconds
        ):
            limit = f"waited {self.settings.max_circuit_wait_seconds:g} s"
        if limit is not None:
            return _final(
                delivery,
                S.FAILED,
                None,
                f"dead-lettered: every provider down and {limit}: {reason}",
                None,
                attempt.tried,
                dead_letter=True,
            )
        return DeliveryUpdate(
            delivery.id,
            delivery.notification_id,
            S.DEFERRED,
            last_error=reason,
            due_at=due,
            attempts_refund=True,
            detail={"reason": "all providers down"},
        )

    async def _send(
        self, provider: Provider, attempts: list[_Attempt], recorder: _Recorder
    ) -> list[_Attempt]:
        failed_over: list[_Attempt] = []

        def verdict(attempt: _Attempt, outcome: Outcome) -> None:
            kind = outcome_name(outcome)
            METRICS.outcomes.labels(self.channel.value, provider.name, kind).inc()
            if kind != "accepted":
                METRICS.provider_errors.labels(self.channel.value, provider.name, kind).inc()
            update = self._verdict(provider, attempt, outcome)
            if update is None:
                failed_over.append(attempt)
            else:
                recorder.add(update)

        for start in range(0, len(attempts), provider.batch_size):
            await self._call(provider, attempts[start : start + provider.batch_size], verdict)
        return failed_over

    async def _call(
        self,
        provider: Provider,
        chunk: list[_Attempt],
        verdict: Callable[[_Attempt, Outcome], None],
    ) -> None:
        """Hand `chunk` to the provider; `verdict` gets each outcome as soon as it is known,
        and exactly once per delivery, whatever the provider does."""
        if self._rate(provider):
            urgent = any(lane_for(a.delivery.priority) == Lane.PRIORITY for a in chunk)
            await self._bucket(provider).acquire(len(chunk), urgent=urgent)
        started = time.perf_counter()
        answered: set[int] = set()
        answering = False

        def report(index: int, outcome: Outcome) -> None:
            nonlocal answering
            if index in answered or not 0 <= index < len(chunk):
                log.error("provider answered one message twice", provider=provider.name)
                return
            answered.add(index)
            if not isinstance(outcome, ProviderDown) and not answering:
                answering = True
                self.circuits.close(provider.name)
            verdict(chunk[index], outcome)

        try:
            await provider.send_each([outbound(a.delivery) for a in chunk], report)
            missing: Outcome = Retry("provider answered no outcome for this message")
        except WrongOutcomeCount as error:
            log.error(str(error), provider=provider.name)
            missing = Retry(WrongOutcomeCount.reason)
        except Exception as error:  # a provider bug must not lose the batch
            log.exception("provider raised instead of answering", provider=provider.name)
            METRICS.provider_errors.labels(self.channel.value, provider.name, "exception").inc()
            missing = Retry(f"provider error: {type(error).__name__}: {error}")
        METRICS.send_seconds.labels(provider.name).observe(time.perf_counter() - started)
        unanswered = [i for i in range(len(chunk)) if i not in answered]
        if unanswered and len(unanswered) < len(chunk):
            log.error("provider answered too few outcomes", provider=provider.name)
        for index in unanswered:
            report(index, missing)

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

    async def _record(self, updates: list[DeliveryUpdate], by_id: dict[str, Delivery]) -> None:
        updates = [  # the log's entry for the attempt carries when it was claimed
            replace(u, attempt=d.attempts, claimed_at=d.claimed_at)
            if (d := by_id.get(u.delivery_id))
            else u
            for u in updates
        ]
        await self._record_outcomes(updates)
        report_outcomes(self.channel, updates, by_id, self.clock.now())
        dead = [
            dead_letter_record(
                u.delivery_id, by_id[u.delivery_id].user_id, self.channel, u.last_error or ""
            )
            for u in updates
            if u.detail.get("dead_lettered")
        ]
        if dead:
            log.warning(
                "deliveries dead-lettered",
                channel=self.channel.value,
                count=len(dead),
                delivery_ids=[u.delivery_id for u in updates if u.detail.get("dead_lettered")],
            )
            await self.bus.publish(dead)
        dead_devices: dict[str, str] = {}
        dead_addresses: dict[str, str] = {}
        for update in updates:
            if update.state != S.UNDELIVERABLE:
                continue
            delivery = by_id[update.delivery_id]
            reason = update.last_error or "invalid target"
            if delivery.channel == Channel.PUSH:
                dead_devices[delivery.target_ref] = reason
            elif delivery.channel in ADDRESS_CHANNELS:
                dead_addresses[delivery.target_ref] = reason
            elif delivery.channel in (Channel.EMAIL, Channel.SMS):
                why = "opt-out (STOP)" if update.detail.get("opt_out") else reason
                await self.deliveries.add_suppression(delivery.channel.value, delivery.target, why)
        if dead_devices:
            log.info("deactivating dead device tokens", count=len(dead_devices))
            await self.deliveries.deactivate_devices(dead_devices)
        if dead_addresses:
            log.info("deactivating dead channel addresses", count=len(dead_addresses))
            await self.deliveries.deactivate_addresses(dead_addresses)


class _Recorder:
    """Writes outcomes as they arrive, a few at a time: every `record_interval_seconds`, or
    at once when `record_batch` are waiting. Leaving `async with` writes the rest (and
    raises if a write failed), so the bus commit comes after every outcome is stored.
    Renews the leases of what is claimed and not yet written meanwhile."""

    def __init__(self, worker: ChannelWorker) -> None:
        self.worker = worker
        self.written: list[DeliveryUpdate] = []
        self._held: dict[str, Delivery] = {}
        self._pending: list[DeliveryUpdate] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def hold(self, claimed: Sequence[Delivery]) -> None:
        for delivery in claimed:
            self._held[delivery.id] = delivery

    def held_ids(self) -> list[str]:
        return list(self._held)

    def add(self, update: DeliveryUpdate) -> None:
        self._pending.append(update)
        if len(self._pending) >= self.worker.settings.record_batch:
            self._wake.set()

    async def __aenter__(self) -> _Recorder:
        self._tasks = [
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self.worker._renew(self)),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        self._wake.set()
        flusher, renewer = self._tasks
        try:
            await flusher
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        if self._error is not None and exc[0] is None:
            raise self._error

    async def _flush_loop(self) -> None:
        interval = self.worker.settings.record_interval_seconds
        while True:
            if not self._closing:
                # Let a few outcomes gather (micro-batching), unless a batch is full.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self._pending and self._error is None:
                batch, self._pending = self._pending, []
                try:
                    await self.worker._record(batch, self._held)
                except Exception as error:  # not committed: the batch is handed out again
                    self._error = error
                self.written.extend(batch)
                for update in batch:
                    self._held.pop(update.delivery_id, None)
            if self._closing and (not self._pending or self._error is not None):
                return


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
