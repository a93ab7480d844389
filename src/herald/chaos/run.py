"""`herald chaos`: the fleet under faults, then a count of what arrived where.

A private PostgreSQL cluster and Kafka broker, the provider fakes in this process (push
through the FCM fake: at_least_once; SMS through the Twilio fake: at_most_once; in-app:
the inbox table), and api, relay, router, scheduler and two worker processes (each works
every channel). A steady stream of notifications goes in (users with several devices,
some in quiet hours, some requests repeated on purpose with the same Idempotency-Key);
meanwhile, at random moments, roles are SIGKILLed and restarted, the broker and the
database are restarted, the fakes answer 503/429 or slow down. After the pipeline drains,
every expected delivery is looked up at its fake:

- lost: expected, never received, and not `unknown`;
- duplicates: received more than once, split by channel policy;
- kills_between_send_and_record: a delivery the fake had received whose lease then
  expired with no outcome recorded (the worker died, or could not write, between the two);
- unknown: at_most_once deliveries whose lease expired; each must have such an expiry;
- resent_or_unknown_per_worker_kill: (at_least_once duplicates + unknown) / worker kills,
  what one SIGKILLed worker costs; workers record outcomes as they arrive and claim only
  what they can send soon, so this stays at a few (target <= 5 at the default rate).

Guarantees (exit 1 when one fails): lost = 0; at_most_once duplicates = 0; at_least_once
duplicates <= kills_between_send_and_record on at_least_once; every unknown accounted for.
Targets (reported as met or missed, never the exit code: they are figures that depend on
how loaded the machine is): re-sent or unknown per worker kill <= `max_resent_per_kill`.

`--soak` runs the same fleet at a fixed rate without faults and reports memory, consumer
lag and outbox backlog over time instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import httpx

from herald.chaos.infra import (
    HeraldFleet,
    PrivateServices,
    ServiceError,
    consumer_lag,
    migrate,
    pg_fetch,
    rss_mb,
    wait_healthy,
)
from herald.domain import Channel, delivery_id
from herald.domain.workflows import step_notification_id
from herald.providers.push_http import DELIVERY_ID_KEY
from herald.security import generate_key

CHANNEL_SETS = (
    ("push", "sms", "in_app"),
    ("push", "sms", "in_app"),
    ("push", "in_app"),
    ("sms",),
    ("push",),
    ("in_app", "sms"),
)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
# Part of the traffic triggers this workflow instead of posting a notification: two sends
# around a delay, each of whose deliveries must arrive once like any other.
WORKFLOW_KEY = "chaos-flow"
WORKFLOW: dict[str, list[dict[str, Any]]] = {
    "steps": [
        {"id": "first", "type": "send", "channels": ["push", "in_app"]},
        {"id": "pause", "type": "delay", "seconds": 2},
        {"id": "second", "type": "send", "channels": ["in_app"]},
    ]
}
WORKFLOW_SHARE = 0.1
TERMINAL = ("sent", "delivered", "failed", "undeliverable", "skipped", "unknown")


@dataclass
class ChaosOptions:
    duration: float = 60.0
    rate: float = 25.0  # notifications per second
    users: int = 120
    seed: int | None = None
    soak: bool = False
    faults: bool = True
    lease_seconds: float = 3.0
    workers: int = 2
    drain_timeout: float = 300.0
    workdir: Path | None = None
    sample_every: float = 5.0
    max_resent_per_kill: float = 5.0


def log(message: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class TimedList(list[Any]):
    """Stands in for a fake's `received` list: remembers when each item arrived."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__(items)
        self.times: list[float] = [time.time()] * len(self)

    def append(self, item: Any) -> None:
        self.times.append(time.time())
        super().append(item)


# ----------------------------------------------------------------------------- the model


@dataclass
class User:
    id: str
    phone: str
    zone: str
    devices: list[tuple[str, str]] = field(default_factory=list)  # (device id, token)
    sms_on: bool = True
    quiet: bool = False


@dataclass
class Sent:
    key: str
    user: User
    channels: tuple[str, ...]
    body: dict[str, Any]
    notification_id: str | None = None  # for a workflow trigger: the run's id
    workflow: bool = False

    @property
    def path(self) -> str:
        return f"/v1/workflows/{WORKFLOW_KEY}/trigger" if self.workflow else "/v1/notifications"


@dataclass
class TrafficStats:
    requests: int = 0
    repeats: int = 0
    repeat_mismatches: int = 0
    conflicts: int = 0
    retries: int = 0
    shed: int = 0  # 429/503 answers (retried with the same key)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Fault:
    kind: str
    started: float
    ended: float = 0.0
    detail: str = ""


class Chaos:
    def __init__(self, options: ChaosOptions, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.rng = random.Random(options.seed)
        self.key = generate_key().token
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="herald-chaos-"))
        self.services = PrivateServices(self.workdir / "services")
        self.users: list[User] = []
        self.sent: dict[str, Sent] = {}
        self.stats = TrafficStats()
        self.faults: list[Fault] = []
        self.fleet: HeraldFleet | None = None
        self.fakes: Any = None
        self.api_url = ""
        self.samples: list[dict[str, Any]] = []
        self._infra_busy = False
        self._provider_busy = False
        self._send_deadline = 0.0
        self._down: set[str] = set()  # roles we killed and have not restarted yet
        self.respawned: Counter[str] = Counter()

    # -- set-up ---------------------------------------------------------------------

    def herald_env(self, fakes_env: dict[str, str]) -> dict[str, str]:
        o = self.options
        return {
            **fakes_env,
            "HERALD_DATABASE_URL": self.services.database_url,
            "HERALD_KAFKA_BOOTSTRAP": self.services.bootstrap,
            "HERALD_KAFKA_PARTITIONS": "4",
            "HERALD_API_KEY": self.key,
            "HERALD_DATA_DIR": str(self.workdir / "data"),
            "HERALD_LOG_FORMAT": "json",
            "HERALD_LEASE_SECONDS": str(o.lease_seconds),
            "HERALD_MAX_ATTEMPTS": "1000",  # faults are temporary: nothing may dead-letter
            "HERALD_RETRY_BASE_SECONDS": "0.5",
            "HERALD_RETRY_MAX_SECONDS": "4",
            "HERALD_CIRCUIT_COOLDOWN_SECONDS": "2",
            # A scheduler killed between releasing work and publishing it: swept soon.
            "HERALD_SWEEP_STALE_AFTER_SECONDS": "20",
            "HERALD_EMAIL_PROVIDERS": "",
            "PYTHONUNBUFFERED": "1",
        }

    async def start(self) -> None:
        from herald.fakes.runner import FakeFleet

        # The fakes' servers would log every start and request on this run's stderr.
        for noisy in ("hypercorn.error", "hypercorn.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
            logging.getLogger(noisy).addFilter(lambda record: record.levelno >= logging.WARNING)

        log(f"work directory {self.workdir}")
        log("starting a private PostgreSQL cluster and Kafka broker")
        await self.services.start()
        self.fakes = FakeFleet(self.workdir / "fakes", with_smtp=False, with_ses=False)
        await self.fakes.start()
        self.fakes.fcm.received = TimedList(self.fakes.fcm.received)
        self.fakes.twilio.received = TimedList(self.fakes.twilio.received)
        env = self.herald_env(self.fakes.env)
        await migrate(env)
        fleet = HeraldFleet(env, self.workdir / "logs")
        self.fleet = fleet
        api = fleet.add("api", "api")
        for role in ("relay", "router", "scheduler"):
            fleet.add(role, role)
        for n in range(self.options.workers):
            channels = [arg for c in ("push", "sms", "in_app") for arg in ("--channel", c)]
            fleet.add(f"worker-{n + 1}", "worker", *channels)
        for name in fleet.roles:
            fleet.start(name)
        self.api_url = f"http://127.0.0.1:{api.port}"
        await wait_healthy(self.api_url, fleet, "api")
        log(f"fleet up: {', '.join(fleet.roles)} (api {self.api_url})")

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop_all()
        if self.fakes is not None:
            await self.fakes.stop()
        await self.services.remove()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(15.0, connect=3.0),
        )

    async def create_users(self, client: httpx.AsyncClient) -> None:
        now = datetime.now(UTC)
        quiet_until = (now + timedelta(seconds=100)).replace(second=0, microsecond=0)
        semaphore = asyncio.Semaphore(16)

        async def one(n: int) -> None:
            user = User(
                id=f"cu{n}",
                phone=f"+1415555{1000 + n:04d}",
                zone=self.rng.choice(ZONES),
                sms_on=self.rng.random() > 0.1,
                quiet=self.rng.random() < 0.2,
            )
            async with semaphore:
                body = {"phone": user.phone, "timezone": user.zone}
                await _ok(client.put(f"/v1/users/{user.id}", json=body))
                for d in range(self.rng.choice((1, 2, 2, 3))):
                    token = f"chaos{n:05d}d{d}:APA91b" + "x" * 140
                    answer = await _ok(
                        client.post(
                            f"/v1/users/{user.id}/devices",
                            json={"platform": "android", "token": token},
                        )
                    )
                    user.devices.append((answer["id"], token))
                preferences: dict[str, Any] = {}
                if not user.sms_on:
                    preferences["channels"] = {"sms": False}
                if user.quiet:
                    zone = ZoneInfo(user.zone)
                    start = (now - timedelta(minutes=30)).astimezone(zone)
                    end = quiet_until.astimezone(zone)
                    preferences["quiet_hours"] = {
                        "start": start.strftime("%H:%M"),
                        "end": end.strftime("%H:%M"),
                    }
                if preferences:
                    await _ok(client.put(f"/v1/users/{user.id}/preferences", json=preferences))
            self.users.append(user)

        await asyncio.gather(*(one(n) for n in range(self.options.users)))
        self.users.sort(key=lambda u: u.id)

    # -- traffic ----------------------------------------------------------------------

    async def send_stream(self, client: httpx.AsyncClient, until: float) -> None:
        interval = 1.0 / self.options.rate
        semaphore = asyncio.Semaphore(24)
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < until:
            await semaphore.acquire()
            if self.sent and self.rng.random() < 0.05:
                original = self.rng.choice(list(self.sent.values()))
                work: Awaitable[None] = self.send(client, original, repeat=True)
            else:
                n += 1
                work = self.send(client, self._new(n))
            task = asyncio.create_task(_released(work, semaphore))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    def _new(self, n: int) -> Sent:
        user = self.rng.choice(self.users)
        key = f"chaos-{n}"
        channels = self.rng.choice(CHANNEL_SETS)
        body: dict[str, Any] = {
            "user_id": user.id,
            "title": f"#{n}",
            "body": f"chaos {key}",
            "channels": list(channels),
        }
        if self.rng.random() < 0.05:
            body["priority"] = "critical"
        workflow = self.rng.random() < WORKFLOW_SHARE
        if workflow:
            del body["channels"]
            channels = ("push", "in_app")
        sent = Sent(key, user, channels, body, workflow=workflow)
        self.sent[key] = sent
        return sent

    async def send(self, client: httpx.AsyncClient, sent: Sent, *, repeat: bool = False) -> None:
        """POST until Herald answers; a timeout or a 5xx is retried with the same key, as a
        careful caller does (the key makes that safe)."""
        headers = {"Idempotency-Key": sent.key}
        while True:
            self.stats.requests += 1
            try:
                response = await client.post(sent.path, json=sent.body, headers=headers)
            except httpx.HTTPError as error:
                self.stats.errors[type(error).__name__] += 1
                response = None
            if response is not None and response.status_code in (200, 201, 202):
                notification_id = response.json()["id"]
                if repeat:
                    self.stats.repeats += 1
                if sent.notification_id is None:
                    sent.notification_id = notification_id
                elif sent.notification_id != notification_id:
                    self.stats.repeat_mismatches += 1
                return
            if response is not None and response.status_code == 409:
                self.stats.conflicts += 1
                return
            if response is not None:
                if response.status_code in (429, 503):
                    self.stats.shed += 1
                self.stats.errors[f"HTTP {response.status_code}"] += 1
            if time.monotonic() > self._send_deadline:
                return
            self.stats.retries += 1
            await asyncio.sleep(0.5 + self.rng.random())

    # -- faults -----------------------------------------------------------------------

    async def fault_loop(self, until: float) -> None:
        tasks: list[asyncio.Task[None]] = []
        kinds: list[tuple[str, float]] = [
            ("kill_worker", 5),
            ("kill_router", 2),
            ("kill_relay", 2),
            ("kill_scheduler", 2),
            ("restart_postgres", 1),
            ("restart_kafka", 0.7),
            ("kill_kafka", 0.4),
            ("provider_503", 1.5),
            ("provider_429", 1.5),
            ("provider_slow", 1.5),
        ]
        names = [k for k, _ in kinds]
        weights = [w for _, w in kinds]
        await asyncio.sleep(3.0)
        while time.monotonic() < until - 4:
            kind = self.rng.choices(names, weights)[0]
            task = self._launch(kind)
            if task is not None:
                tasks.append(task)
            await asyncio.sleep(self.rng.uniform(1.0, 3.5))
        await asyncio.gather(*tasks)

    def _launch(self, kind: str) -> asyncio.Task[None] | None:
        assert self.fleet is not None
        work: Awaitable[None]
        if kind.startswith("kill_") and kind != "kill_kafka":
            role = kind.removeprefix("kill_")
            if role == "worker":
                role = self.rng.choice([n for n in self.fleet.roles if n.startswith("worker")])
            if not self.fleet.alive(role):
                return None
            work = self._kill_role(kind, role)
        elif kind in ("restart_postgres", "restart_kafka", "kill_kafka"):
            if self._infra_busy:
                return None
            self._infra_busy = True
            work = self._restart_service(kind)
        else:
            if self._provider_busy:
                return None
            self._provider_busy = True
            work = self._provider_fault(kind)
        return asyncio.create_task(work)

    async def _kill_role(self, kind: str, role: str) -> None:
        assert self.fleet is not None
        fault = Fault(kind, time.time(), detail=role)
        self.faults.append(fault)
        self._down.add(role)
        try:
            await self.fleet.kill(role)
            log(f"SIGKILL {role}")
            await asyncio.sleep(self.rng.uniform(0.3, 2.0))
            self.fleet.start(role)
        finally:
            self._down.discard(role)
            fault.ended = time.time()

    async def _restart_service(self, kind: str) -> None:
        fault = Fault(kind, time.time())
        self.faults.append(fault)
        try:
            if kind == "restart_postgres":
                took = await self.services.run("restart-postgres")
            elif kind == "restart_kafka":
                took = await self.services.run("restart-kafka")
            else:
                took = await self.services.run("kill-kafka")
                await asyncio.sleep(self.rng.uniform(0.5, 3.0))
                took = await self.services.run("start-kafka")
            fault.detail = f"{took:.1f}s"
            log(f"{kind} done ({took:.1f} s)")
        except ServiceError as error:
            fault.detail = f"failed: {error}"
            log(f"{kind} failed: {error}")
        finally:
            fault.ended = time.time()
            self._infra_busy = False

    async def _provider_fault(self, kind: str) -> None:
        fakes = self.fakes
        seconds = self.rng.uniform(2.0, 6.0)
        fault = Fault(kind, time.time(), detail=f"{seconds:.1f}s")
        self.faults.append(fault)
        log(f"{kind} for {seconds:.1f} s")
        try:
            if kind == "provider_503":
                fakes.fcm.fail_fraction = fakes.twilio.fail_fraction = 0.5
            elif kind == "provider_429":
                fakes.twilio.throttle_fraction = 0.5
                tokens = [t for u in self.users for _, t in u.devices]
                for token in self.rng.sample(tokens, min(40, len(tokens))):
                    fakes.fcm.fail(token, "QUOTA_EXCEEDED", times=1, retry_after=1)
            else:
                # Slower than usual, still well inside the lease per request.
                fakes.fcm.latency = fakes.twilio.latency = self.rng.uniform(0.2, 0.6)
            await asyncio.sleep(seconds)
        finally:
            fakes.fcm.fail_fraction = fakes.twilio.fail_fraction = 0.0
            fakes.twilio.throttle_fraction = 0.0
            fakes.fcm.latency = fakes.twilio.latency = 0.0
            fault.ended = time.time()
            self._provider_busy = False

    # -- draining ---------------------------------------------------------------------

    def expected(self) -> dict[str, tuple[str, str]]:
        """delivery id -> (channel, notification key) for every accepted notification."""
        expected: dict[str, tuple[str, str]] = {}
        for sent in self.sent.values():
            if sent.workflow and sent.notification_id is not None:
                expected |= self._workflow_expected(sent, sent.notification_id)
                continue
            nid = sent.notification_id
            if nid is None:
                continue
            user = sent.user
            if "push" in sent.channels:
                for device_id, _ in user.devices:
                    expected[delivery_id(nid, Channel.PUSH, device_id)] = ("push", sent.key)
            if "sms" in sent.channels and user.sms_on:
                expected[delivery_id(nid, Channel.SMS, user.phone)] = ("sms", sent.key)
            if "in_app" in sent.channels:
                expected[delivery_id(nid, Channel.IN_APP, user.id)] = ("in_app", sent.key)
        return expected

    def _workflow_expected(self, sent: Sent, run_id: str) -> dict[str, tuple[str, str]]:
        """The deliveries of a run's send steps (deterministic ids per run and step)."""
        expected: dict[str, tuple[str, str]] = {}
        for step in WORKFLOW["steps"]:
            if step["type"] != "send":
                continue
            nid = step_notification_id(run_id, step["id"])
            if "push" in step["channels"]:
                for device_id, _ in sent.user.devices:
                    expected[delivery_id(nid, Channel.PUSH, device_id)] = ("push", sent.key)
            expected[delivery_id(nid, Channel.IN_APP, sent.user.id)] = ("in_app", sent.key)
        return expected

    async def count_workflows(self) -> dict[str, Any]:
        """Each step of each accepted run done (or skipped) once, each send step's
        notification made once."""
        runs = [s.notification_id for s in self.sent.values() if s.workflow and s.notification_id]
        url = self.services.database_url
        steps = await pg_fetch(
            url,
            "SELECT run_id, step_id, status FROM workflow_run_steps WHERE run_id = ANY($1)",
            runs,
        )
        sends = await pg_fetch(
            url,
            "SELECT idempotency_key FROM notifications WHERE idempotency_key LIKE 'workflow:%'",
        )
        made = Counter(row["idempotency_key"] for row in sends)
        send_steps = [st["id"] for st in WORKFLOW["steps"] if st["type"] == "send"]
        wanted = {f"workflow:{run}:{step}" for run in runs for step in send_steps}
        done = sum(1 for row in steps if row["status"] == "done")
        return {
            "workflow_runs": len(runs),
            "workflow_steps_expected": len(runs) * len(WORKFLOW["steps"]),
            "workflow_steps_done": done,
            "workflow_sends_missing": len(wanted - set(made)),
            "workflow_sends_duplicated": sum(n - 1 for n in made.values() if n > 1),
        }

    async def pending(self) -> dict[str, int]:
        url = self.services.database_url
        rows = await pg_fetch(
            url,
            "SELECT 'outbox' AS what, count(*) AS n FROM ("
            " SELECT 1 FROM notifications n JOIN relay_positions p ON p.lane = n.lane_order"
            " WHERE n.state = 'accepted' AND (n.lane_order, n.relay_xid, n.relay_seq)"
            " > (p.lane, p.position_xid, p.position_seq)"
            " UNION ALL SELECT 1 FROM outbox) AS waiting "
            "UNION ALL SELECT 'unrouted', count(*) FROM notifications n WHERE state = 'accepted' "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = n.id) "
            "UNION ALL SELECT 'workflow_runs', count(*) FROM workflow_runs "
            "WHERE status = 'running' "
            "UNION ALL SELECT state, count(*) FROM deliveries "
            "WHERE state IN ('queued', 'deferred', 'sending') GROUP BY state",
        )
        return {row["what"]: int(row["n"]) for row in rows if row["n"]}

    async def drain(self) -> tuple[float, dict[str, int]]:
        started = time.monotonic()
        deadline = started + self.options.drain_timeout
        waiting: dict[str, int] = {}
        stable = 0
        while time.monotonic() < deadline:
            try:
                waiting = await self.pending()
            except (OSError, Exception) as error:  # the database may be restarting
                waiting = {"database": 1}
                log(f"drain: {error}")
            if not waiting:
                stable += 1
                if stable >= 3:  # a few quiet seconds: late answers are recorded
                    break
            else:
                stable = 0
            await asyncio.sleep(1.0)
        return time.monotonic() - started, waiting

    # -- counting ---------------------------------------------------------------------

    async def count(self) -> dict[str, Any]:
        url = self.services.database_url
        expected = self.expected()
        received: dict[str, list[float]] = defaultdict(list)
        fcm = self.fakes.fcm.received
        for message, at in zip(fcm, fcm.times, strict=True):
            did = message.message.get("data", {}).get(DELIVERY_ID_KEY)
            if did:
                received[did].append(at)
        by_key = {s.body["body"]: s for s in self.sent.values()}
        twilio = self.fakes.twilio.received
        unmatched = 0
        for sms, at in zip(twilio, twilio.times, strict=True):
            sent = by_key.get(sms.body)
            if sent is None or sent.notification_id is None:
                unmatched += 1
                continue
            received[delivery_id(sent.notification_id, Channel.SMS, sms.to)].append(at)
        # One inbox item per delivery; `sends` counts how many times it was stored.
        for row in await pg_fetch(url, "SELECT delivery_id, created_at, sends FROM inbox_items"):
            received[row["delivery_id"]].extend([row["created_at"].timestamp()] * row["sends"])
        deliveries = {
            row["id"]: (row["state"], row["policy"])
            for row in await pg_fetch(url, "SELECT id, state, policy FROM deliveries")
        }
        events: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
        for row in await pg_fetch(
            url,
            "SELECT delivery_id, state, detail->>'reason' AS reason, created_at, "
            "(detail->>'claimed_at')::timestamptz AS claimed_at "
            "FROM delivery_events ORDER BY id",
        ):
            # A claim writes no event of its own: each attempt's end (outcome, expired lease)
            # carries its claim time, which stands for the claim here.
            if row["claimed_at"] is not None:
                events[row["delivery_id"]].append((row["claimed_at"].timestamp(), "sending", ""))
            events[row["delivery_id"]].append(
                (row["created_at"].timestamp(), row["state"], row["reason"] or "")
            )
        # A send its row tells (its `sent_at`) wrote no event: the row stands for its claim
        # and its outcome.
        for row in await pg_fetch(
            url, "SELECT id, claimed_at, sent_at FROM deliveries WHERE sent_at IS NOT NULL"
        ):
            events[row["id"]].append((row["claimed_at"].timestamp(), "sending", ""))
            events[row["id"]].append((row["sent_at"].timestamp(), "sent", ""))

        policy_of = {"push": "at_least_once", "in_app": "at_least_once", "sms": "at_most_once"}
        lost: list[str] = []
        once = 0
        duplicates: Counter[str] = Counter()
        unknown = unknown_received = unaccounted_unknown = 0
        interrupted: Counter[str] = Counter()
        by_channel: dict[str, Counter[str]] = defaultdict(Counter)
        anomalies: list[dict[str, Any]] = []
        other_gaps: Counter[str] = Counter()
        kills = [f.started for f in self.faults if f.kind == "kill_worker"]

        def kill_between(start: float, end: float) -> bool:
            return any(start <= k <= end for k in kills)

        for did, (channel, _key) in expected.items():
            policy = deliveries.get(did, ("", policy_of[channel]))[1] or policy_of[channel]
            state = deliveries.get(did, ("missing", ""))[0]
            copies = len(received.get(did, ()))
            stats = by_channel[channel]
            stats["expected"] += 1
            expiries = [
                at for at, st, reason in events.get(did, ()) if reason.startswith("lease expired")
            ]
            # Sends that reached the provider whose outcome was never recorded before the
            # lease ran out: the worker died (or could not write) between send and record.
            pairs = _interrupted_sends(received.get(did, []), expiries, events.get(did, []))
            gaps = sum(1 for r, e in pairs if kill_between(r - 0.5, e))
            interrupted[policy] += gaps
            other_gaps[policy] += len(pairs) - gaps
            if state == "unknown":
                unknown += 1
                stats["unknown"] += 1
                unknown_received += copies > 0
                claims = [at for at, st, _ in events.get(did, ()) if st == "sending"]
                accounted = any(
                    kill_between(max((c for c in claims if c <= e), default=e) - 0.5, e)
                    for e in expiries
                )
                if not accounted:
                    unaccounted_unknown += 1
            if state == "unknown" or copies != 1 or gaps:
                anomalies.append(
                    {
                        "delivery_id": did,
                        "channel": channel,
                        "state": state,
                        "received_at": received.get(did, []),
                        "events": events.get(did, []),
                    }
                )
            if copies == 0:
                if state != "unknown":
                    lost.append(did)
                    stats["lost"] += 1
            elif copies == 1:
                once += 1
                stats["once"] += 1
            else:
                duplicates[policy] += copies - 1
                stats["duplicates"] += copies - 1
        unexpected = [did for did in received if did not in expected]
        (self.workdir / "anomalies.json").write_text(
            json.dumps({"faults": [vars(f) for f in self.faults], "deliveries": anomalies})
        )
        lost_states = Counter(deliveries.get(did, ("missing", ""))[0] for did in lost)
        resent_or_unknown = duplicates["at_least_once"] + unknown
        return {
            "expected_deliveries": len(expected),
            "delivered_once": once,
            "lost": len(lost),
            "lost_by_state": dict(lost_states),
            "lost_examples": lost[:5],
            "duplicates": {
                "at_least_once": duplicates["at_least_once"],
                "at_most_once": duplicates["at_most_once"],
            },
            "unknown": unknown,
            "unknown_received": unknown_received,
            "unknown_unaccounted": unaccounted_unknown,
            "worker_kills": len(kills),
            "resent_or_unknown": resent_or_unknown,
            "resent_or_unknown_per_worker_kill": round(resent_or_unknown / len(kills), 2)
            if kills
            else 0.0,
            "kills_between_send_and_record": interrupted["at_least_once"]
            + interrupted["at_most_once"],
            "kills_between_send_and_record_by_policy": dict(interrupted),
            # Sends whose record missed the lease with no worker killed in between (a
            # database outage longer than the lease, or a lease that was not renewed).
            "interrupted_without_kill": dict(other_gaps),
            "unexpected_received": len(unexpected) + unmatched,
            "by_channel": {c: dict(v) for c, v in sorted(by_channel.items())},
        }

    # -- the runs ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        o = self.options
        await self.start()
        async with self.client() as client:
            supervisor_stop = asyncio.Event()
            supervisor = asyncio.create_task(self.supervise(supervisor_stop))
            await self.create_users(client)
            await _ok(client.put(f"/v1/workflows/{WORKFLOW_KEY}", json=WORKFLOW))
            log(
                f"{len(self.users)} users, {sum(len(u.devices) for u in self.users)} devices; "
                f"sending {o.rate:g}/s for {o.duration:g} s" + (" with faults" if o.faults else "")
            )
            started = time.monotonic()
            until = started + o.duration
            self._send_deadline = until + o.drain_timeout / 2
            work = [self.send_stream(client, until)]
            if o.faults:
                work.append(self.fault_loop(until))
            work.append(self.sample_loop(until))
            await asyncio.gather(*work)
            sent_for = time.monotonic() - started
        await self.heal()
        log("sending stopped; draining")
        drain_s, waiting = await self.drain()
        supervisor_stop.set()
        await supervisor
        if o.soak:
            await self.sample(time.monotonic() - started)
        await asyncio.sleep(1.0)
        report = {**await self.count(), **await self.count_workflows()}
        kinds = Counter(f.kind for f in self.faults)
        report = {
            "duration_s": round(sent_for, 1),
            "drain_s": round(drain_s, 1),
            "accepted": sum(1 for s in self.sent.values() if s.notification_id),
            **report,
            "faults": dict(sorted(kinds.items())),
            "requests": self.stats.requests,
            "repeated_requests": self.stats.repeats,
            "repeat_id_mismatches": self.stats.repeat_mismatches,
            "conflicts": self.stats.conflicts,
            "not_accepted": sum(1 for s in self.sent.values() if not s.notification_id),
            "retried_requests": self.stats.retries,
            "request_errors": dict(self.stats.errors),
            "still_pending": waiting,
            "respawned_after_exit": dict(self.respawned),
            "restarts": {n: r.starts - 1 for n, r in self.fleet.roles.items()}
            if self.fleet
            else {},
            "workdir": str(self.workdir),
        }
        report["samples"] = self.samples
        report["max_resent_per_kill"] = o.max_resent_per_kill
        report["guarantees"] = guarantees(report)
        report["targets"] = targets(report)
        report["ok"] = all(report["guarantees"].values())
        return report

    async def supervise(self, stop: asyncio.Event) -> None:
        """Start again a role that exited by itself, as systemd's Restart= would: a role
        started while the broker or the database is down exits with `cannot start`."""
        assert self.fleet is not None
        while not stop.is_set():
            for name in self.fleet.roles:
                if name not in self._down and not self.fleet.alive(name):
                    log(f"{name} exited by itself: {self.fleet.exited()}; starting it again")
                    self.respawned[name] += 1
                    self.fleet.start(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def heal(self) -> None:
        """Every role running again before the drain (a kill's restart may be in flight)."""
        assert self.fleet is not None
        for name in self.fleet.roles:
            if not self.fleet.alive(name):
                self.fleet.start(name)

    # -- soak -------------------------------------------------------------------------

    async def sample_loop(self, until: float) -> None:
        started = time.monotonic()
        while time.monotonic() < until:
            await self.sample(time.monotonic() - started)
            await asyncio.sleep(self.options.sample_every)

    async def sample(self, at: float) -> None:
        assert self.fleet is not None
        rss = {name: rss_mb(pid) for name, pid in self.fleet.pids().items()}
        lag: dict[str, int] = {}
        if self.options.soak:
            # Only without broker faults: librdkafka admin clients torn down while the
            # broker is away have crashed this process (SIGSEGV) in a chaos run.
            try:
                lag = await asyncio.to_thread(consumer_lag, self.services.bootstrap)
            except Exception as error:
                log(f"consumer lag: {error}")
        try:
            waiting = await self.pending()
        except Exception:
            waiting = {}
        self.samples.append(
            {
                "t_s": round(at, 1),
                "rss_mb": {k: round(v, 1) for k, v in rss.items() if v is not None},
                "consumer_lag": lag,
                "outbox": waiting.get("outbox", 0),
                "pending_deliveries": sum(
                    v for k, v in waiting.items() if k in ("queued", "sending")
                ),
                "accepted": sum(1 for s in self.sent.values() if s.notification_id),
            }
        )
        last = self.samples[-1]
        log(
            f"t={at:.0f}s accepted {last['accepted']} outbox {last['outbox']} "
            f"pending {last['pending_deliveries']} lag {last['consumer_lag']}"
        )


def _interrupted_sends(
    receipts: list[float], expiries: list[float], events: list[tuple[float, str, str]]
) -> list[tuple[float, float]]:
    """(receipt, expiry) for each lease expiry preceded by a receipt at the fake with no
    outcome recorded between the two: a send whose record never landed in time."""
    pairs = []
    outcomes = [at for at, state, _ in events if state in ("sent", "delivered", "deferred")]
    for expiry in expiries:
        earlier = [r for r in receipts if r <= expiry]
        if not earlier:
            continue
        last = max(earlier)
        if not any(last <= at <= expiry for at in outcomes):
            pairs.append((last, expiry))
    return pairs


def guarantees(report: dict[str, Any]) -> dict[str, bool]:
    per_policy = report["kills_between_send_and_record_by_policy"]
    return {
        "nothing lost": report["lost"] == 0,
        "no at_most_once duplicates": report["duplicates"]["at_most_once"] == 0,
        "at_least_once duplicates <= kills between send and record": (
            report["duplicates"]["at_least_once"] <= per_policy.get("at_least_once", 0)
        ),
        "every unknown accounted for": report["unknown_unaccounted"] == 0,
        "every request accepted": report["not_accepted"] == 0 and report["conflicts"] == 0,
        "a repeated key returns the first id": report["repeat_id_mismatches"] == 0,
        "pipeline drained": not report["still_pending"],
        "every workflow step done once": (
            report["workflow_steps_done"] == report["workflow_steps_expected"]
            and report["workflow_sends_missing"] == 0
            and report["workflow_sends_duplicated"] == 0
        ),
    }


def targets(report: dict[str, Any]) -> dict[str, bool]:
    """What a run should show on an unloaded machine; the time between a send and its
    record grows with the load, and with it what one killed worker costs."""
    return {
        f"re-sent or unknown per worker kill <= {report['max_resent_per_kill']:g}": (
            report["resent_or_unknown_per_worker_kill"] <= report["max_resent_per_kill"]
        ),
    }


def table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        ("duration (s, sending)", report["duration_s"]),
        ("drain (s)", report["drain_s"]),
        ("accepted notifications", report["accepted"]),
        ("requests (incl. retries)", report["requests"]),
        ("repeated on purpose (same key)", report["repeated_requests"]),
        ("expected deliveries", report["expected_deliveries"]),
        ("delivered once", report["delivered_once"]),
        ("lost", report["lost"]),
        ("duplicates at_least_once", report["duplicates"]["at_least_once"]),
        ("duplicates at_most_once", report["duplicates"]["at_most_once"]),
        ("unknown (at_most_once)", report["unknown"]),
        ("  of which reached the fake", report["unknown_received"]),
        ("kills between send and record", report["kills_between_send_and_record"]),
        ("re-sent or unknown per worker kill", report["resent_or_unknown_per_worker_kill"]),
        ("workflow runs", report["workflow_runs"]),
        (
            "workflow steps done / expected",
            f"{report['workflow_steps_done']} / {report['workflow_steps_expected']}",
        ),
        (
            "workflow sends missing / duplicated",
            f"{report['workflow_sends_missing']} / {report['workflow_sends_duplicated']}",
        ),
    ]
    for kind, n in report["faults"].items():
        rows.append((f"fault {kind}", n))
    for channel, stats in report["by_channel"].items():
        rows.append((f"{channel}", ", ".join(f"{k} {v}" for k, v in stats.items())))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("")
    for name, ok in report["guarantees"].items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
    for name, met in report.get("targets", {}).items():
        lines.append(f"{'MET ' if met else 'MISSED'}  {name} (target)")
    if report["still_pending"]:
        lines.append(f"still pending after the drain: {report['still_pending']}")
    if report["lost"]:
        lines.append(f"lost by state: {report['lost_by_state']}")
    return "\n".join(lines)


def soak_table(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return "no samples"
    names = sorted({n for s in samples for n in s["rss_mb"]})
    head = ["t_s", "accepted", "outbox", "pending", "lag", *(f"{n} MB" for n in names)]
    lines = ["  ".join(f"{h:>10}" for h in head)]
    for s in samples:
        lag = s["consumer_lag"]
        total_lag = sum(v for v in lag.values() if isinstance(v, int)) if lag else 0
        cells = [
            s["t_s"],
            s["accepted"],
            s["outbox"],
            s["pending_deliveries"],
            total_lag,
            *(s["rss_mb"].get(n, "-") for n in names),
        ]
        lines.append("  ".join(f"{c!s:>10}" for c in cells))
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    lines.append("")
    lines.append(
        "RSS start -> end: "
        + ", ".join(f"{n} {first.get(n, '-')} -> {last.get(n, '-')} MB" for n in names)
    )
    return "\n".join(lines)


async def _ok(request: Awaitable[httpx.Response]) -> Any:
    response = await request
    if response.status_code >= 300:
        raise ServiceError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


async def _released(work: Awaitable[None], semaphore: asyncio.Semaphore) -> None:
    try:
        await work
    finally:
        semaphore.release()


async def run_chaos(options: ChaosOptions, *, as_json: bool, out: TextIO = sys.stdout) -> bool:
    chaos = Chaos(options, out)
    report: dict[str, Any] | None = None
    try:
        report = await chaos.run()
    finally:
        await chaos.stop()
    if as_json:
        out.write(json.dumps(report, default=str) + "\n")
    else:
        if options.soak:
            out.write(soak_table(report.get("samples", [])) + "\n\n")
        out.write(table(report) + "\n")
        out.write(f"logs: {chaos.workdir}\n")
    out.flush()
    return bool(report["ok"])
