"""The worker acts on the provider's typed outcome alone: one table of outcomes and what
each does to the delivery, the device, the suppression list and the circuit."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import ClassVar

import httpx
import pytest
import sqlalchemy as sa

from herald.clock import FakeClock
from herald.domain import (
    Accepted,
    Channel,
    DeliveryState,
    InvalidTarget,
    Outcome,
    Platform,
    ProviderDown,
    Rejected,
    Retry,
)
from herald.domain.retry import RetryPolicy
from herald.fakes.tls import LocalTls, generate_local_tls
from herald.providers.base import OutboundMessage, Provider
from herald.providers.registry import ProviderSet
from herald.runtime import Runtime
from herald.storage import DeliveryUpdate
from herald.storage import schema as t
from herald.workers.worker import ChannelWorker, WorkerSettings
from tests.fixtures.herald import eventually

S = DeliveryState


class Scripted(Provider):
    """Answers each send with the next outcome of its script; records what it was given."""

    channel: ClassVar[Channel] = Channel.EMAIL

    def __init__(self, name: str, *script: Outcome) -> None:
        self.name = name  # type: ignore[misc]
        self.script = list(script)
        self.sent: list[OutboundMessage] = []

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        self.sent.extend(messages)
        return [self.script.pop(0) if self.script else Accepted("ok") for _ in messages]


@pytest.fixture
def clock() -> FakeClock:
    from datetime import UTC, datetime

    return FakeClock(datetime.now(UTC))


async def route_one(
    api: httpx.AsyncClient, runtime: Runtime, channels: list[str], **extra: object
) -> str:
    await api.put("/v1/users/u1", json={"email": "u1@example.com", "phone": "+14155550100"})
    await api.post("/v1/users/u1/devices", json={"platform": "ios", "token": "ab" * 32})
    accepted = await api.post(
        "/v1/notifications", json={"user_id": "u1", "title": "t", "channels": channels, **extra}
    )
    await runtime.router().route([accepted.json()["id"]])
    (delivery,) = await runtime.storage.notifications.deliveries_of(accepted.json()["id"])
    return delivery.id


def worker_for(
    runtime: Runtime, channel: Channel, *providers: Provider, max_attempts: int = 3
) -> ChannelWorker:
    provider_set = ProviderSet(
        by_channel={channel: list(providers)}, push_by_platform={"ios": list(providers)}
    )
    settings = WorkerSettings(
        retry=RetryPolicy(max_attempts=max_attempts, base_seconds=2, max_seconds=60)
    )
    return ChannelWorker(
        channel,
        runtime.storage.deliveries,
        runtime.bus,
        provider_set,
        runtime.clock,
        settings,
        random.Random(1),
    )


@pytest.mark.parametrize(
    ("outcome", "state", "error"),
    [
        (Accepted("msg-1"), S.SENT, None),
        (Accepted("inbox", delivered=True), S.DELIVERED, None),
        (Rejected("MessageRejected"), S.FAILED, "MessageRejected"),
        (InvalidTarget("mailbox unavailable"), S.UNDELIVERABLE, "mailbox unavailable"),
        (Retry("throttled"), S.DEFERRED, "throttled"),
        pytest.param(
            ProviderDown("bad credentials"),
            S.DEFERRED,
            "email: provider down: bad credentials",
            marks=pytest.mark.expect_errors,  # an opened circuit is logged as an error
        ),
    ],
)
async def test_each_outcome_sets_the_delivery_state(
    api: httpx.AsyncClient,
    runtime: Runtime,
    outcome: Outcome,
    state: DeliveryState,
    error: str | None,
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    worker = worker_for(runtime, Channel.EMAIL, Scripted("email", outcome))
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == state
    assert delivery.last_error == error
    if isinstance(outcome, Accepted):
        assert delivery.provider_message_id == outcome.provider_message_id


async def test_retry_honours_retry_after_then_dead_letters(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    provider = Scripted("email", Retry("429", after=120.0), Retry("503"), Retry("503"))
    worker = worker_for(runtime, Channel.EMAIL, provider, max_attempts=3)
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.DEFERRED
    assert delivery.due_at is not None
    assert (delivery.due_at - clock.now()).total_seconds() == pytest.approx(120.0, abs=0.01)
    await worker.process([delivery_id])  # not due yet: not claimable
    assert len(provider.sent) == 1
    for expected_attempts in (2, 3):
        clock.advance(200)
        await worker.process([delivery_id])
        (delivery,) = await runtime.storage.deliveries.get([delivery_id])
        assert delivery.attempts == expected_attempts
    assert delivery.state == S.FAILED
    assert delivery.last_error == "dead-lettered after 3 attempts: 503"
    assert len(provider.sent) == 3


async def test_the_delivery_log_shows_each_attempt_with_its_claim_time(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """A claim writes no log row (the delivery row keeps claimed_at), nor does a plain
    `queued` or a plain send (the row keeps sent_at): the log still lists queued, and
    sending before each attempt's outcome, at the times they happened, with the attempt
    number."""
    delivery_id = await route_one(api, runtime, ["email"])
    made = clock.now()
    clock.advance(5)
    worker = worker_for(runtime, Channel.EMAIL, Scripted("email", Retry("busy", after=30)))
    first_claim = clock.now()
    await worker.process([delivery_id])
    clock.advance(60)
    second_claim = clock.now()
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts, delivery.claimed_at) == (S.SENT, 2, second_claim)
    log = await runtime.storage.notifications.events_of(delivery.notification_id)
    assert [(e.state, e.at, e.detail.get("attempt")) for e in log] == [
        (S.QUEUED, made, None),
        (S.SENDING, first_claim, 1),
        (S.DEFERRED, first_claim, 1),
        (S.SENDING, second_claim, 2),
        (S.SENT, second_claim, 2),
    ]
    async with runtime.storage.database.reading() as db:
        written = await db.scalar(
            sa.select(sa.func.count())
            .select_from(t.delivery_events)
            .where(t.delivery_events.c.delivery_id == delivery_id)
        )
    assert written == 1  # the retry; the send is told by the row


async def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=2, max_seconds=60)
    rng = random.Random(7)
    delays = [policy.delay(attempt, None, rng) for attempt in range(1, 8)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(60, 2 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert policy.delay(1, 30.0, rng) == 30.0


async def test_retry_past_the_ttl_is_dead_lettered(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    delivery_id = await route_one(api, runtime, ["email"], ttl_seconds=1)
    worker = worker_for(runtime, Channel.EMAIL, Scripted("email", Retry("busy", after=30)))
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.FAILED
    assert "dead-lettered" in (delivery.last_error or "")


async def test_invalid_push_target_deactivates_the_device(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    delivery_id = await route_one(api, runtime, ["push"])
    worker = worker_for(runtime, Channel.PUSH, Scripted("apns", InvalidTarget("410 Unregistered")))
    await worker.process([delivery_id])
    (device,) = (await api.get("/v1/users/u1/devices")).json()["items"]
    assert device["active"] is False
    assert device["deactivated_reason"] == "410 Unregistered"
    again = await api.post(
        "/v1/notifications", json={"user_id": "u1", "title": "t", "channels": ["push"]}
    )
    await runtime.router().route([again.json()["id"]])
    (skipped,) = await runtime.storage.notifications.deliveries_of(again.json()["id"])
    assert (skipped.state, skipped.last_error) == (S.SKIPPED, "no active device")


async def test_invalid_address_is_suppressed_and_not_sent_again(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    await worker_for(
        runtime, Channel.EMAIL, Scripted("email", InvalidTarget("550 no such user"))
    ).process([delivery_id])
    suppressions = (await api.get("/v1/suppressions", params={"channel": "email"})).json()["items"]
    assert [(s["address"], s["reason"]) for s in suppressions] == [
        ("u1@example.com", "550 no such user")
    ]
    again = await api.post(
        "/v1/notifications", json={"user_id": "u1", "title": "t", "channels": ["email"]}
    )
    await runtime.router().route([again.json()["id"]])
    (skipped,) = await runtime.storage.notifications.deliveries_of(again.json()["id"])
    assert (skipped.state, skipped.last_error) == (S.SKIPPED, "address is suppressed")


@pytest.mark.expect_errors
async def test_provider_down_opens_the_circuit_without_spending_attempts(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    provider = Scripted("ses", ProviderDown("AccountSuspended"))
    worker = worker_for(runtime, Channel.EMAIL, provider)
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts) == (S.DEFERRED, 0)
    assert worker.circuits.is_open("ses")
    clock.advance(31)
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts, delivery.provider_message_id) == (S.SENT, 1, "ok")
    assert not worker.circuits.is_open("ses")


@pytest.mark.expect_errors
async def test_failover_sends_through_the_next_provider_once(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    ses = Scripted("ses", ProviderDown("SendingPaused"))
    sendgrid = Scripted("sendgrid", Accepted("sg-1"))
    await worker_for(runtime, Channel.EMAIL, ses, sendgrid).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.provider, delivery.provider_message_id) == (
        S.SENT,
        "sendgrid",
        "sg-1",
    )
    assert (
        [m.delivery_id for m in ses.sent] == [m.delivery_id for m in sendgrid.sent] == [delivery_id]
    )
    events = await runtime.storage.notifications.events_of(delivery.notification_id)
    sent = next(e for e in events if e.state == S.SENT)
    assert sent.detail["failed_over_from"] == ["ses: provider down: SendingPaused"]


@pytest.mark.expect_errors
async def test_a_provider_that_raises_does_not_lose_the_batch(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    class Broken(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            raise RuntimeError("bug")

    delivery_id = await route_one(api, runtime, ["email"])
    await worker_for(runtime, Channel.EMAIL, Broken("email")).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.DEFERRED
    assert "RuntimeError: bug" in (delivery.last_error or "")


async def test_dead_lettered_deliveries_go_to_the_dead_letter_topic(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    import orjson

    from herald.bus.interface import DEAD_LETTER_TOPIC

    consumer = runtime.bus.consumer([DEAD_LETTER_TOPIC], "ops")
    await consumer.poll(10, timeout=0.2)  # join before anything is published
    delivery_id = await route_one(api, runtime, ["email"])
    worker = worker_for(runtime, Channel.EMAIL, Scripted("email", Retry("503")), max_attempts=1)
    await worker.process([delivery_id])
    messages = []
    for _ in range(20):
        messages += await consumer.poll(10, timeout=0.5)
        if messages:
            break
    await consumer.close()
    assert [orjson.loads(m.value) for m in messages] == [
        {
            "delivery_id": delivery_id,
            "channel": "email",
            "error": "dead-lettered after 1 attempts: 503",
        }
    ]


async def test_a_slow_send_keeps_its_lease_and_is_not_sent_again(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """The lease is renewed while the provider takes its time: the scheduler does not take
    a slow batch for a dead worker (which would send again, or mark SMS `unknown`)."""
    released: list[int] = []

    class Slow(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            clock.advance(20)  # far past the original lease
            await asyncio.sleep(0.25)  # a few renewals (every lease / 3)
            released.append(await runtime.scheduler().tick())
            return await super().send(messages)

    delivery_id = await route_one(api, runtime, ["email"])
    worker = worker_for(runtime, Channel.EMAIL, Slow("email"))
    worker.settings.lease_seconds = 0.3
    await worker.process([delivery_id])
    assert released == [0]
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.SENT
    assert delivery.attempts == 1


async def test_an_outcome_survives_a_database_blip_while_recording(
    api: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    record = runtime.storage.deliveries.record_outcomes
    failures = [ConnectionResetError("database restarting")]

    async def flaky(updates: Sequence[DeliveryUpdate]) -> int:
        if failures:
            raise failures.pop()
        return await record(updates)

    monkeypatch.setattr(runtime.storage.deliveries, "record_outcomes", flaky)
    provider = Scripted("email")
    await worker_for(runtime, Channel.EMAIL, provider).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.SENT
    assert len(provider.sent) == 1


async def test_a_late_answer_settles_an_at_most_once_delivery_marked_unknown(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """The worker is alive but slow (starved of CPU, say): its lease runs out, the scheduler
    marks the SMS unknown and does not send it again; the provider's answer, when it comes,
    says what happened."""
    delivery_id = await route_one(api, runtime, ["sms"])

    class Starved(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            clock.advance(120)  # past the lease, before any renewal could land
            requeued = await runtime.scheduler().tick()
            assert requeued == 0  # at_most_once: marked unknown, not put back
            (delivery,) = await runtime.storage.deliveries.get([delivery_id])
            assert delivery.state == S.UNKNOWN
            return await super().send(messages)

    provider = Starved("twilio", Accepted("SM123"))
    await worker_for(runtime, Channel.SMS, provider).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.provider_message_id) == (S.SENT, "SM123")
    assert len(provider.sent) == 1


# --------------------------------------------------------------------------- failover


@pytest.mark.expect_errors  # the unreachable provider opens its circuit: an error
async def test_an_unreachable_provider_fails_over_in_the_same_attempt(
    api: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SES refusing connections is SES being down: SendGrid sends the email at once, in
    the same attempt, instead of SES being retried until its attempts run out."""
    from herald.config import Settings
    from herald.fakes.sendgrid import FakeSendGrid
    from herald.providers.sendgrid.client import SendGridProvider
    from herald.providers.ses.client import SesProvider
    from tests.providers.conftest import free_tcp_port

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    delivery_id = await route_one(api, runtime, ["email"], body="Thanks")
    async with FakeSendGrid(clock=clock) as fake:
        settings = Settings(
            email_providers=["ses", "sendgrid"],
            ses_endpoint_url=f"http://127.0.0.1:{free_tcp_port()}",  # nothing listens
            sendgrid_api_key=fake.api_key,
            sendgrid_base_url=fake.base_url,
        )
        ses, sendgrid = (
            SesProvider.from_settings(settings),
            SendGridProvider.from_settings(settings),
        )
        assert ses is not None
        assert sendgrid is not None
        try:
            await worker_for(runtime, Channel.EMAIL, ses, sendgrid).process([delivery_id])
        finally:
            await ses.close()
            await sendgrid.close()
        [mail] = fake.received
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.provider, delivery.attempts) == (S.SENT, "sendgrid", 1)
    assert mail.custom_args == {"herald_delivery_id": delivery_id}
    sent = next(
        e
        for e in await runtime.storage.notifications.events_of(delivery.notification_id)
        if e.state == S.SENT
    )
    [failed_over] = sent.detail["failed_over_from"]
    assert failed_over.startswith("ses: provider down: ses unreachable")


# --------------------------------------------------------------------------- one target


@pytest.fixture(scope="module")
def web_tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return generate_local_tls(tmp_path_factory.mktemp("tls"))


async def test_a_hostile_web_push_endpoint_fails_alone_and_opens_no_circuit(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, web_tls: LocalTls
) -> None:
    """An endpoint answering 403 is that subscription's problem: its delivery fails, the
    `webpush` circuit stays closed and another user's critical push goes out at once."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from herald.fakes.webpush import FakeWebPush
    from herald.providers.targets import TargetPolicy
    from herald.providers.webpush.client import VapidKey, WebPushProvider

    async with FakeWebPush(tls=web_tls, clock=clock) as fake:
        ids = {}
        for user, priority in (("mallory", "normal"), ("alice", "critical")):
            subscription = fake.subscribe()
            if user == "mallory":
                fake.fail(subscription["endpoint"], 403)
            await api.put(f"/v1/users/{user}", json={})
            await runtime.storage.directory.register_device(
                user, Platform.WEB, subscription["endpoint"], subscription
            )
            accepted = await api.post(
                "/v1/notifications",
                json={"user_id": user, "title": "t", "channels": ["push"], "priority": priority},
            )
            await runtime.router().route([accepted.json()["id"]])
            (delivery,) = await runtime.storage.notifications.deliveries_of(accepted.json()["id"])
            ids[user] = delivery.id
        provider = WebPushProvider(
            VapidKey(ec.generate_private_key(ec.SECP256R1())),
            "mailto:ops@example.com",
            clock=clock,
            ca_file=web_tls.ca_file,
            targets=TargetPolicy(allow_private=True),  # the fake listens on 127.0.0.1
        )
        worker = ChannelWorker(
            Channel.PUSH,
            runtime.storage.deliveries,
            runtime.bus,
            ProviderSet(
                by_channel={Channel.PUSH: [provider]}, push_by_platform={"web": [provider]}
            ),
            runtime.clock,
        )
        try:
            await worker.process([ids["mallory"]])
            assert not worker.circuits.is_open("webpush")
            await worker.process([ids["alice"]])
        finally:
            await provider.close()
        assert len(fake.received) == 1
    by_id = {d.id: d for d in await runtime.storage.deliveries.get(list(ids.values()))}
    hostile, critical = by_id[ids["mallory"]], by_id[ids["alice"]]
    assert (hostile.state, hostile.last_error) == (
        S.FAILED,
        "web push 403: VAPID key refused for this subscription",
    )
    assert (critical.state, critical.attempts) == (S.SENT, 1)


async def test_a_deleted_devices_pending_push_is_not_sent(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    delivery_id = await route_one(api, runtime, ["push"])
    (device,) = (await api.get("/v1/users/u1/devices")).json()["items"]
    assert (await api.delete(f"/v1/users/u1/devices/{device['id']}")).status_code == 204
    provider = Scripted("apns")
    await worker_for(runtime, Channel.PUSH, provider).process([delivery_id])
    assert provider.sent == []
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.SKIPPED
    assert "device deleted" in (delivery.last_error or "")


@pytest.mark.parametrize(
    ("ttl_seconds", "max_wait"),
    [(300, 86_400.0), (None, 600.0)],
    ids=["bounded by the TTL", "no TTL: bounded by the longest wait"],
)
@pytest.mark.expect_errors  # every opened circuit is logged as an error
async def test_waiting_for_a_provider_that_stays_down_ends(
    api: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    ttl_seconds: int | None,
    max_wait: float,
) -> None:
    """Waiting for an open circuit refunds the attempt, so without a bound a provider that
    never comes back would defer the delivery every 30 s forever."""
    extra = {"ttl_seconds": ttl_seconds} if ttl_seconds else {}
    delivery_id = await route_one(api, runtime, ["email"], **extra)
    provider = Scripted("ses", *[ProviderDown("account suspended")] * 1000)
    worker = worker_for(runtime, Channel.EMAIL, provider)
    worker.settings.max_circuit_wait_seconds = max_wait
    for _ in range(100):
        await worker.process([delivery_id])
        (delivery,) = await runtime.storage.deliveries.get([delivery_id])
        if delivery.state != S.DEFERRED:
            break
        assert delivery.attempts == 0  # waiting for the circuit spends no attempt
        clock.advance(31)
    assert delivery.state == S.FAILED
    assert (delivery.last_error or "").startswith("dead-lettered: every provider down and")
    assert len(provider.sent) <= max(ttl_seconds or 0, max_wait) / 30 + 1


# --------------------------------------------------------------------------- recording


async def test_outcomes_are_recorded_as_they_arrive(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """The first answer of a batch is stored while the provider still works on the rest:
    a worker killed then leaves only the unanswered ones to be sent again."""
    first_id = await route_one(api, runtime, ["email"])
    second_id = await route_one(api, runtime, ["email"])
    gate = asyncio.Event()

    class Gated(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            outcomes: dict[int, Outcome] = {}
            await self.send_each(messages, outcomes.__setitem__)
            return [outcomes[i] for i in range(len(messages))]

        async def send_each(
            self,
            messages: Sequence[OutboundMessage],
            report: Callable[[int, Outcome], None],
        ) -> None:
            self.sent.extend(messages)
            report(0, Accepted("first"))
            await gate.wait()
            for index in range(1, len(messages)):
                report(index, Accepted(f"later-{index}"))

    worker = worker_for(runtime, Channel.EMAIL, Gated("email"))
    processing = asyncio.create_task(worker.process([first_id, second_id]))

    async def first_recorded() -> bool:
        deliveries = await runtime.storage.deliveries.get([first_id, second_id])
        return sorted(d.state for d in deliveries) == [S.SENDING, S.SENT]

    try:
        await eventually(first_recorded, timeout=5)
    finally:
        gate.set()
        await processing
    deliveries = await runtime.storage.deliveries.get([first_id, second_id])
    assert sorted((d.state, d.provider_message_id or "") for d in deliveries) == [
        (S.SENT, "first"),
        (S.SENT, "later-1"),
    ]


async def test_a_rate_limited_provider_gets_only_what_it_can_send_claimed(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """At 2 messages/s the worker claims one delivery at a time, not the whole batch: a
    worker killed while the bucket holds it back leaves almost nothing claimed (which for
    SMS would become `unknown`)."""
    ids = [await route_one(api, runtime, ["sms"]) for _ in range(6)]
    claimed_at_send: list[int] = []

    class Counting(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            answered = {m.delivery_id for m in self.sent}
            deliveries = await runtime.storage.deliveries.get(ids)
            waiting = [d for d in deliveries if d.state == S.SENDING and d.id not in answered]
            claimed_at_send.append(len(waiting))  # claimed, not yet handed to a provider
            return await super().send(messages)

    worker = worker_for(runtime, Channel.SMS, Counting("twilio"))
    worker.settings.rate_limits = {"twilio": 2.0}
    await worker.process(ids)
    deliveries = await runtime.storage.deliveries.get(ids)
    assert {d.state for d in deliveries} == {S.SENT}
    assert max(claimed_at_send) == 1


async def test_a_delivery_whose_workers_keep_dying_is_dead_lettered(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """Each claim counts an attempt even when no outcome comes back (the worker died and
    the lease expired): past the attempts, the next claim dead-letters it unsent."""
    delivery_id = await route_one(api, runtime, ["email"])
    for _ in range(3):
        assert (await runtime.storage.deliveries.claim([delivery_id], 30)).claimed  # ... and dies
        clock.advance(31)
        await runtime.scheduler().tick()  # the lease expired: queued again
    provider = Scripted("email")
    await worker_for(runtime, Channel.EMAIL, provider, max_attempts=3).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.FAILED
    assert delivery.last_error == "dead-lettered after 3 attempts without an answer"
    assert provider.sent == []


# ------------------------------------------------------------- the paths around a send


async def test_a_delivery_past_its_ttl_at_claim_fails_without_a_send(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    delivery_id = await route_one(api, runtime, ["email"], ttl_seconds=60)
    clock.advance(61)  # the message waited on the bus longer than it may live
    provider = Scripted("email")
    await worker_for(runtime, Channel.EMAIL, provider).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.last_error) == (S.FAILED, "expired before it could be sent")
    assert provider.sent == []


@pytest.mark.expect_errors  # opening the circuit (the earlier batch) logs an error
async def test_a_circuit_already_open_at_claim_defers_without_a_send_or_an_attempt(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    delivery_id = await route_one(api, runtime, ["email"])
    provider = Scripted("ses")
    worker = worker_for(runtime, Channel.EMAIL, provider)
    worker.circuits.open("ses", "opened by an earlier batch", 45.0)
    await worker.process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts, delivery.last_error) == (
        S.DEFERRED,
        0,
        "ses: circuit open",
    )
    assert delivery.due_at is not None
    assert (delivery.due_at - clock.now()).total_seconds() == pytest.approx(45.0, abs=0.01)
    assert provider.sent == []


@pytest.mark.expect_errors  # the worker logs the provider's wrong answer as an error
@pytest.mark.parametrize("answers", [0, 2])
async def test_a_provider_answering_the_wrong_number_of_outcomes_retries_the_batch(
    api: httpx.AsyncClient, runtime: Runtime, answers: int
) -> None:
    class Miscounting(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            self.sent.extend(messages)
            return [Accepted("ok")] * answers

    delivery_id = await route_one(api, runtime, ["email"])
    await worker_for(runtime, Channel.EMAIL, Miscounting("email")).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.last_error) == (
        S.DEFERRED,
        "provider answered the wrong number of outcomes",
    )


async def test_a_webhook_arriving_while_the_delivery_is_sending_is_kept(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """The provider's delivery report can overtake its own API answer: the webhook moves
    the delivery from `sending` to `delivered`, and the worker's later `sent` does not
    move it back."""
    from herald.storage import ProviderReport

    class Reporting(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            (message,) = messages
            await runtime.storage.feedback.record_provider_events(
                [ProviderReport(message.delivery_id, None, S.DELIVERED, "email", {}, None)]
            )
            return await super().send(messages)

    delivery_id = await route_one(api, runtime, ["email"])
    await worker_for(runtime, Channel.EMAIL, Reporting("email", Accepted("m-1"))).process(
        [delivery_id]
    )
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.DELIVERED
    events = [
        e.state for e in await runtime.storage.notifications.events_of(delivery.notification_id)
    ]
    assert events[:3] == [S.QUEUED, S.SENDING, S.DELIVERED]
    assert await runtime.scheduler().tick() == 0  # nothing left to send again


async def test_failing_lease_renewals_let_the_lease_run_out_and_the_delivery_recover(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the renewals while a slow provider sends: the worker keeps
    going (renewal failures are warnings), the scheduler takes the lease for a dead one
    and re-queues the at_least_once delivery, and the worker's late answer does not
    overwrite that: the delivery goes out again, as the policy allows."""
    renewals: list[int] = []

    async def refuse(delivery_ids: Sequence[str], lease_seconds: float) -> int:
        renewals.append(len(delivery_ids))
        raise ConnectionResetError("database restarting")

    monkeypatch.setattr(runtime.storage.deliveries, "extend_leases", refuse)

    class Slow(Scripted):
        async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            await asyncio.sleep(0.25)  # several renewal periods (lease / 3)
            clock.advance(5)  # past the lease nobody renewed
            requeued.append(await runtime.scheduler().tick())
            return await super().send(messages)

    requeued: list[int] = []
    delivery_id = await route_one(api, runtime, ["email"])
    worker = worker_for(runtime, Channel.EMAIL, Slow("email"))
    worker.settings.lease_seconds = 0.3
    await worker.process([delivery_id])
    assert renewals  # it tried
    assert requeued == [1]
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts) == (S.QUEUED, 1)
    await worker_for(runtime, Channel.EMAIL, Scripted("email")).process([delivery_id])
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts) == (S.SENT, 2)


class _FastTime:
    """Monotonic time that runs a minute per reading: the worker's recording deadline
    passes at once (perf_counter stays real for the metrics)."""

    def __init__(self) -> None:
        import time

        self.now = time.monotonic()
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        self.now += 60
        return self.now


@pytest.mark.parametrize("channel", ["email", "sms"])
async def test_recording_that_fails_past_its_deadline_leaves_the_lease_to_decide(
    api: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    channel: str,
) -> None:
    """The provider answered but the database stays down past the worker's recording
    deadline: the worker gives up (the batch fails, to be handed out again) and the
    delivery stays `sending` under its lease; when that runs out the channel's policy
    decides: at_least_once (email) is sent again, at_most_once (SMS) becomes unknown."""
    from herald.workers import worker as worker_module

    delivery_id = await route_one(api, runtime, [channel])

    async def down(updates: Sequence[DeliveryUpdate]) -> int:
        raise ConnectionResetError("database down")

    provider = Scripted("twilio" if channel == "sms" else "email")
    worker = worker_for(runtime, Channel(channel), provider)
    with monkeypatch.context() as patched:
        patched.setattr(runtime.storage.deliveries, "record_outcomes", down)
        patched.setattr(worker_module, "time", _FastTime())
        with pytest.raises(ConnectionResetError):
            await worker.process([delivery_id])
    assert len(provider.sent) == 1
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == S.SENDING
    assert await runtime.scheduler().tick() == 0  # the lease still runs
    clock.advance(worker.settings.lease_seconds + 1)
    await runtime.scheduler().tick()
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert delivery.state == (S.UNKNOWN if channel == "sms" else S.QUEUED)
