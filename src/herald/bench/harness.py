"""`herald bench`: Herald end to end on the chosen backends, against provider fakes on
loopback, with the naive baseline beside it in the same run.

1. Fakes: the fleet of protocol-faithful fakes (`FakeFleet`: the FCM OAuth2 token endpoint
   and the credentials) plus the FCM send sink (`herald.bench.sink`, several processes,
   answering after `latency_ms`), which FCM's base URL points at.
2. Herald: `herald serve` (embedded: SQLite + in-process bus) or, for production, one
   process per role (api, relay, router, `workers` x `worker --channel push`, scheduler) on
   a fresh PostgreSQL database and a fresh Kafka topic prefix, from HERALD_DATABASE_URL and
   HERALD_KAFKA_BOOTSTRAP.
3. U users with D android devices each through the API, a warm-up, then N notifications
   (push only) through `POST /v1/notifications/batch` from several concurrent clients; the
   clock runs from the first submit until every delivery is in a final state.
   With `rate`, the N notifications are offered at a steady rate instead (`duration`
   seconds of it when given), for latency at a chosen load.
4. Figures: rates, accept-to-receipt latency (the notification's created_at against the
   sink's receipt time), peak RSS and CPU of every Herald process (psutil), RSS sampled
   every `rss_interval_s` (first / last / peak / slope), the fakes' CPU apart, lost and
   duplicated deliveries counted at the sink.
5. The naive baseline (`herald.bench.baseline`) on the same sink and database.

`herald.bench.broadcast` (critical latency during a broadcast) and `herald.bench.sweep`
(workers x N) build on `Bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from herald.bench.baseline import BaselineResult, run_baseline
from herald.bench.db import BenchDb, PostgresBenchDb
from herald.bench.errors import BenchError
from herald.bench.figures import Delivered, Receipts, baseline_block, delivered
from herald.bench.memory import MemoryTimeline
from herald.bench.peer import FCM_MULTICAST_LIMIT, PeerResult, peer_block, run_peer
from herald.bench.pgstats import STATS_SETTLE_S, Calls, PgCounters, Snapshot, statements, written
from herald.bench.profile import Profiler, py_spy
from herald.bench.report import Progress, percentiles, stage
from herald.bench.server import ServerMeter, server_meter, with_rates
from herald.bench.sink import SinkFleet
from herald.bench.submit import ItemFactory, Submitter
from herald.security import generate_key

HERALD = str(Path(sys.executable).with_name("herald"))
DEFAULT_POSTGRES_URL = "postgresql://herald:herald@127.0.0.1:5432/herald"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"


@dataclass
class BenchConfig:
    backend: str = "embedded"
    users: int = 1000
    devices: int = 1
    notifications: int = 2000
    workers: int = 1
    latency_ms: float = 5.0
    clients: int = 4
    batch_size: int = 200
    sink_processes: int = 2
    baseline_seconds: float = 10.0
    stall_timeout_s: float = 60.0
    keep: bool = False
    work_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    rate: float | None = None  # notifications offered per second; None: flat out
    duration: float | None = None  # with rate: notifications = rate x duration
    rss_interval_s: float = 5.0
    baseline: bool = True
    scenario: str = "throughput"  # or "broadcast" (herald.bench.broadcast)
    subscribers: int = 20_000  # broadcast: the topic's audience
    trickle_rate: float = 5.0  # broadcast: critical notifications per second
    trickle_seconds: float = 20.0  # broadcast: the trickle alone, before the broadcast
    priority_pool: bool = False  # production: a router and a push worker for the priority lane
    peers: tuple[str, ...] = ()  # other clients on the same sink, e.g. "firebase-admin"
    peer_multicast: int = FCM_MULTICAST_LIMIT  # tokens per send_each_for_multicast call
    profile_dir: Path | None = None  # py-spy profiles of every Herald process
    profile_format: str = "flamegraph"
    # Run the Herald processes from this source tree (a `git archive` of another commit)
    # while the harness stays this one: two commits measured the same way, in pairs.
    herald_src: Path | None = None

    def resolved(self) -> BenchConfig:
        """Checks the options; `duration` with `rate` fixes the number of notifications."""
        if self.backend not in ("embedded", "production"):
            raise BenchError(f"unknown backend {self.backend!r}")
        if self.scenario not in ("throughput", "broadcast"):
            raise BenchError(f"unknown scenario {self.scenario!r}")
        if self.duration is not None and self.rate is None:
            raise BenchError("--duration needs --rate (notifications per second)")
        if self.rate is None:
            return self
        # A paced run is not a race: the flat-out baseline beside it would mean nothing.
        count = round(self.rate * self.duration) if self.duration else self.notifications
        return replace(self, notifications=max(1, count), baseline=False)


def android_token(user: int, device: int) -> str:
    return f"bench{user:07d}d{device}:APA91b" + "x" * 140


@dataclass
class HeraldProcess:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    peak_rss: int = 0

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [HERALD, *self.argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ps = psutil.Process(self.popen.pid)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def logged(self, word: str) -> bool:
        return word in self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def diagnosis(self) -> str:
        """Its log's tail and, where py-spy is installed, its threads' stacks (what a
        process that never got ready is waiting for)."""
        return f"{self.tail()}\n{self.stacks()}"

    def stacks(self) -> str:
        if self.popen is None:
            return ""
        try:
            dumped = subprocess.run(
                [py_spy(), "dump", "--pid", str(self.popen.pid)],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (BenchError, OSError, subprocess.TimeoutExpired) as error:
            return f"(no stacks: {error})"
        return (dumped.stdout or dumped.stderr).decode(errors="replace")[-6000:]

    def cpu(self) -> float:
        try:
            assert self.ps is not None
            times = self.ps.cpu_times()
            return float(times.user + times.system)
        except psutil.Error:
            return 0.0

    def sample_rss(self) -> int:
        """The current RSS in bytes (0 when the process is gone); keeps the peak."""
        with contextlib.suppress(psutil.Error, AssertionError):
            assert self.ps is not None
            rss = int(self.ps.memory_info().rss)
            self.peak_rss = max(self.peak_rss, rss)
            return rss
        return 0

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


async def wait_ready(processes: Sequence[HeraldProcess], timeout: float = 90.0) -> None:
    """Until every process has logged `ready`; a process that exits, or the timeout, is a
    BenchError that says why (the log, and where a process still starting is stuck)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise BenchError(f"herald {process.name} exited:\n{process.tail()}")
        if all(p.logged('"ready"') for p in processes):
            stage("Herald ready: " + ", ".join(p.name for p in processes))
            return
        await asyncio.sleep(0.2)
    waiting = [p for p in processes if not p.logged('"ready"')]
    found = [await asyncio.to_thread(p.diagnosis) for p in waiting]  # py-spy takes a moment
    raise BenchError(
        f"Herald did not become ready within {timeout:g} s: "
        + ", ".join(p.name for p in waiting)
        + "".join(
            f"\n--- {p.name}: its log, then where it is\n{diagnosis}"
            for p, diagnosis in zip(waiting, found, strict=True)
        )
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bench:
    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        self.processes: list[HeraldProcess] = []
        self.notes: list[str] = []
        self.api_url = ""
        self.key = generate_key().token
        self.database_url = ""
        self.admin_url = ""
        self.topic_prefix = ""
        self.kafka_bootstrap = ""
        self.timeline: MemoryTimeline | None = None  # set while the load runs
        self.work = Path()
        self.pg: PgCounters | None = None  # production: PostgreSQL's counters

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        config = self.config
        load_before = [round(x, 2) for x in os.getloadavg()]
        made_dir = config.work_dir is None
        work = config.work_dir or Path(tempfile.mkdtemp(prefix="herald-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        from herald.fakes.runner import FakeFleet

        # hypercorn resets its logger's level per server, so a filter (which it keeps).
        logging.getLogger("hypercorn.error").addFilter(lambda r: r.levelno >= logging.WARNING)
        fleet = FakeFleet(work / "fakes", with_smtp=False, with_ses=False)
        sink = SinkFleet(
            work / "sink",
            processes=config.sink_processes,
            latency_ms=config.latency_ms,
            cert_file=None,
            key_file=None,
        )
        try:
            async with fleet:
                fleet.fcm.latency = config.latency_ms / 1000  # the token endpoint, once
                sink.cert_file, sink.key_file = fleet.tls.cert_file, fleet.tls.key_file
                sink.project = fleet.fcm.project_id
                await asyncio.to_thread(sink.start)
                stage(f"FCM sink: {config.sink_processes} processes on {sink.base_url}")
                env = await self._environment(
                    fleet.env_for(email_providers=("sendgrid",)), sink.base_url, work
                )
                async with self._herald(env, work):
                    report = await self._measure(sink, fleet, load_before)
        finally:
            await asyncio.to_thread(sink.stop)
            await self._cleanup()
            if made_dir and not config.keep:
                shutil.rmtree(work, ignore_errors=True)
            elif config.keep:
                stage(f"kept the run's files in {work}")
        return report

    async def _environment(
        self, fake_env: dict[str, str], sink_url: str, work: Path
    ) -> dict[str, str]:
        env = {
            **os.environ,
            **fake_env,
            "HERALD_FCM_BASE_URL": sink_url,
            "HERALD_API_KEY": self.key,
            "HERALD_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        if self.config.herald_src is not None:  # its `herald migrate` too
            env["PYTHONPATH"] = str(self.config.herald_src.resolve())
        if self.config.backend == "embedded":
            env |= {
                "HERALD_DATA_DIR": str(work / "data"),
                "HERALD_DATABASE_URL": "",
                "HERALD_KAFKA_BOOTSTRAP": "",
            }
            self.database_url = f"sqlite:///{(work / 'data' / 'herald.db').resolve()}"
        else:
            configured = os.environ.get("HERALD_DATABASE_URL") or DEFAULT_POSTGRES_URL
            if not configured.startswith("postgres"):
                raise BenchError(
                    "production needs HERALD_DATABASE_URL=postgresql://... "
                    '(eval "$(scripts/services.sh env)")'
                )
            self.admin_url = configured.replace("postgresql+asyncpg://", "postgresql://")
            self.kafka_bootstrap = (
                os.environ.get("HERALD_KAFKA_BOOTSTRAP") or DEFAULT_KAFKA_BOOTSTRAP
            )
            name = f"herald_bench_{self.run_id}"
            try:
                admin = await asyncpg.connect(self.admin_url, timeout=10)
            except (OSError, asyncpg.PostgresError) as error:
                raise BenchError(
                    f"PostgreSQL at {self.admin_url.split('@')[-1]} does not answer ({error}); "
                    "start it with scripts/services.sh start"
                ) from error
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            self.database_url = f"{self.admin_url.rpartition('/')[0]}/{name}"
            self.topic_prefix = f"bench{self.run_id}."
            env |= {
                "HERALD_DATABASE_URL": self.database_url,
                "HERALD_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "HERALD_KAFKA_TOPIC_PREFIX": self.topic_prefix,
            }
            migrate = await asyncio.to_thread(
                subprocess.run,
                [HERALD, "migrate"],
                env=env,
                capture_output=True,
                start_new_session=True,
                timeout=120,
            )
            if migrate.returncode != 0:
                raise BenchError(f"herald migrate failed:\n{migrate.stdout[-2000:]!r}")
        return {**env, **self.config.extra_env}

    @contextlib.asynccontextmanager
    async def _herald(self, env: dict[str, str], work: Path) -> AsyncIterator[None]:
        port = _free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        roles = self._roles(["--port", str(port)])
        # Only the process serving the API seeds HERALD_API_KEY: roles starting at once
        # would race on inserting it (process._seed_admin_key reads, then inserts).
        keyless = {k: v for k, v in env.items() if k != "HERALD_API_KEY"}
        for name, argv in roles:
            process = HeraldProcess(name, argv, work / f"{name}.log")
            process.start(env if argv[0] in ("serve", "api") else keyless)
            self.processes.append(process)
        sampler = asyncio.create_task(self._sample_rss())
        try:
            await wait_ready(self.processes)
            yield
        finally:
            sampler.cancel()
            for process in self.processes:
                await asyncio.to_thread(process.stop)

    def _roles(self, http: list[str]) -> list[tuple[str, list[str]]]:
        """(name, argv) of every Herald process to start."""
        if self.config.backend == "embedded":
            return [("serve", ["serve", *http])]
        roles = [("api", ["api", *http]), ("relay", ["relay"]), ("router", ["router"])]
        roles += [
            (f"worker-{i + 1}", ["worker", "--channel", "push"]) for i in range(self.config.workers)
        ]
        roles += self._priority_pool()
        roles.append(("scheduler", ["scheduler"]))
        return roles

    def _priority_pool(self) -> list[tuple[str, list[str]]]:
        """A dedicated pool for critical and high traffic (README: priority lanes)."""
        if not self.config.priority_pool:
            return []
        return [
            ("router-priority", ["router", "--lane", "priority"]),
            ("worker-priority", ["worker", "--channel", "push", "--lane", "priority"]),
        ]

    async def _sample_rss(self) -> None:
        while True:
            rss = {process.name: process.sample_rss() for process in self.processes}
            now = time.perf_counter()
            if self.timeline is not None and self.timeline.due(now):
                self.timeline.record(now, rss)
            await asyncio.sleep(0.25)

    def _start_timeline(self) -> None:
        self.timeline = MemoryTimeline(self.config.rss_interval_s)

    def _stop_timeline(self) -> dict[str, dict[str, Any]]:
        """One last sample, then the per-process summary."""
        timeline, self.timeline = self.timeline, None
        if timeline is None:
            return {}
        now = time.perf_counter()
        timeline.record(now, {p.name: p.sample_rss() for p in self.processes})
        return timeline.summary()

    async def _cleanup(self) -> None:
        if self.config.backend != "production" or self.config.keep:
            return
        if self.admin_url and self.database_url:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                admin = await asyncpg.connect(self.admin_url, timeout=10)
                try:
                    name = self.database_url.rpartition("/")[2]
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await admin.close()
        if self.topic_prefix:
            from confluent_kafka.admin import AdminClient

            admin_client = AdminClient({"bootstrap.servers": self.kafka_bootstrap})
            with contextlib.suppress(Exception):
                metadata = await asyncio.to_thread(admin_client.list_topics, timeout=5)
                names = [n for n in metadata.topics if n.startswith(self.topic_prefix)]
                if names:
                    futures = admin_client.delete_topics(names, operation_timeout=10)
                    await asyncio.gather(
                        *(asyncio.wrap_future(f) for f in futures.values()),
                        return_exceptions=True,
                    )

    # -- the run ---------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=aiohttp.ClientTimeout(total=120),
            connector=aiohttp.TCPConnector(limit=64),
        )

    async def _create_users(
        self,
        session: aiohttp.ClientSession,
        users: Audience,
        label: str = "users + devices",
    ) -> None:
        progress = Progress(label, users.count)
        semaphore = asyncio.Semaphore(16)
        done = 0

        async def one(user: int) -> None:
            nonlocal done
            async with semaphore:
                await self._create_user(session, users, user)
            done += 1
            progress.update(done)

        await asyncio.gather(*(one(u) for u in range(users.count)))
        progress.finish()

    async def _create_user(
        self, session: aiohttp.ClientSession, users: Audience, user: int
    ) -> None:
        user_id = users.user_id(user)
        async with session.put(f"/v1/users/{user_id}", json={"timezone": "UTC"}) as answer:
            if answer.status not in (200, 201):
                raise BenchError(f"PUT user: {answer.status} {await answer.text()}")
        for device in range(self.config.devices):
            body = {"platform": "android", "token": android_token(users.token_base + user, device)}
            async with session.post(f"/v1/users/{user_id}/devices", json=body) as answer:
                if answer.status not in (200, 201):
                    raise BenchError(f"POST device: {answer.status} {await answer.text()}")
        if users.topic is not None:
            async with session.put(f"/v1/users/{user_id}/topics/{users.topic}", json={}) as answer:
                if answer.status not in (200, 201):
                    raise BenchError(f"PUT topic: {answer.status} {await answer.text()}")

    def _item(self, prefix: str, i: int, priority: str = "normal") -> dict[str, Any]:
        return {
            "idempotency_key": f"{prefix}{i}",
            "user_id": f"u{i % self.config.users}",
            "title": f"Bench #{i}",
            "body": "Your order has shipped",
            "data": {"order": str(i)},
            "channels": ["push"],
            "priority": priority,
        }

    async def _send(
        self,
        session: aiohttp.ClientSession,
        make: ItemFactory,
        count: int,
        progress: Progress | None,
        rate: float | None,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Submits `count` items (flat out, or paced at `rate`); returns how many went."""
        submitter = Submitter(session, self.config.batch_size, self.config.clients, progress)
        if rate is None:
            return await submitter.flat_out(make, count)
        return await submitter.paced(make, count, rate, stop)

    async def _warm_up(self, session: aiohttp.ClientSession, db: BenchDb) -> None:
        """Connections, the OAuth2 token, consumer group assignment."""
        warmup = min(self.config.users, 50)
        prefix = f"warmup-{self.run_id}-"
        await self._send(session, partial(self._item, prefix), warmup, None, None)
        expected = warmup * self.config.devices
        await self._wait_final(db, expected, Progress("warm-up", expected), 0)

    async def _wait_final(self, db: BenchDb, target: int, progress: Progress, base: int) -> float:
        """Poll until `target` deliveries are final; returns the perf_counter at the end."""
        last_change, last = time.perf_counter(), -1
        while True:
            asked = time.perf_counter()
            done = await db.final_count() - base
            now = time.perf_counter()
            progress.update(max(done, 0))
            if done >= target:
                return now
            if done != last:
                last_change, last = now, done
            elif now - last_change > self.config.stall_timeout_s:
                self.notes.append(
                    f"stalled: {done} of {target} deliveries final after "
                    f"{self.config.stall_timeout_s:.0f} s without progress"
                )
                return now
            self._check_alive()
            # The count grows with N: poll less often when it costs, so that the harness
            # takes at most about a sixth of a core of the database.
            await asyncio.sleep(max(0.1, 5 * (now - asked)))

    def _check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise BenchError(f"herald {process.name} exited:\n{process.tail()}")

    def _cpu_meter(self, sink: SinkFleet) -> CpuMeter:
        return CpuMeter(self.processes, sink.pids())

    async def _measure(
        self, sink: SinkFleet, fleet: Any, load_before: list[float]
    ) -> dict[str, Any]:
        config = self.config
        db = await BenchDb.open(self.database_url)
        try:
            counters = self.pg = await self._counters(db)
            async with self._session() as session:
                await self._create_users(session, Audience("u", config.users))
                await self._warm_up(session, db)
                before = await self._settled(counters, time.perf_counter())
                window = await self._load(session, db, sink)
            stage("counting receipts at the sink")
            await asyncio.sleep(sink.flush_delay())
            rows = await db.bench_deliveries(self._prefix)
            herald = delivered(rows, Receipts.read(sink.receipts()), window.expected)
            del rows
            after = await self._settled(counters, window.ended)
            naive = await self._naive(db, fleet, sink) if config.baseline else None
            peers = [await self._peer(name, fleet, sink, window.expected) for name in config.peers]
        finally:
            await db.close()
        # The sinks flush on a timer: stop them to read every receipt of the baseline too.
        await asyncio.to_thread(sink.stop)
        baseline = baseline_block(naive, sink.receipts() if naive else ())
        peer_blocks = {peer.name: peer_block(peer, sink.receipts()) for peer in peers}
        storage = (
            written(before, after, herald.deliveries, config.notifications)
            if before is not None and after is not None
            else None,
            statements(*window.calls, herald.deliveries, config.notifications),
        )
        return self._report(window, herald, baseline, load_before, peer_blocks, storage)

    async def _counters(self, db: BenchDb) -> PgCounters | None:
        """PostgreSQL's write and statement counters of the bench database (production)."""
        if not isinstance(db, PostgresBenchDb):
            return None
        counters = PgCounters(db.connection, self.database_url.rpartition("/")[2])
        await counters.setup()
        if counters.statements_note:
            self.notes.append(counters.statements_note)
        return counters

    async def _settled(self, counters: PgCounters | None, since: float) -> Snapshot | None:
        if counters is None:
            return None
        wait = max(0.0, since + STATS_SETTLE_S - time.perf_counter())
        if wait > 1:
            stage(f"waiting {wait:.0f} s for PostgreSQL's row counters to settle")
        snapshot = await counters.settled(since)
        self.notes += counters.notes
        counters.notes.clear()
        return snapshot

    async def _peer(self, name: str, fleet: Any, sink: SinkFleet, deliveries: int) -> PeerResult:
        config = self.config
        stage(f"peer {name}: {deliveries:,} deliveries (at most {config.baseline_seconds:.0f} s)")
        result = await run_peer(
            name,
            work=self.work,
            credentials=fleet.files.fcm_credentials,
            ca_file=fleet.tls.ca_file,
            send_base_url=sink.base_url,
            users=config.users,
            devices=config.devices,
            deliveries=deliveries,
            multicast=config.peer_multicast,
            max_seconds=config.baseline_seconds,
            run_id=self.run_id,
        )
        await asyncio.sleep(sink.flush_delay())
        return result

    def _server_meter(self, db: BenchDb) -> ServerMeter | None:
        if not isinstance(db, PostgresBenchDb):
            return None
        pid = db.connection.get_server_pid()
        name = self.database_url.rpartition("/")[2]
        return server_meter([pid], name, self.kafka_bootstrap, self.notes)

    async def _profiler(self) -> Profiler | None:
        if self.config.profile_dir is None:
            return None
        profiler = Profiler(self.config.profile_dir, self.config.profile_format)
        pids = {p.name: p.popen.pid for p in self.processes if p.popen is not None}
        await profiler.start(pids)
        stage(f"profiling {', '.join(pids)} with py-spy into {self.config.profile_dir}")
        return profiler

    @property
    def _prefix(self) -> str:
        return f"bench-{self.run_id}-"

    async def _load(self, session: aiohttp.ClientSession, db: BenchDb, sink: SinkFleet) -> Window:
        """The measured run: submit N (flat out or paced), wait until all are final."""
        config = self.config
        expected = config.notifications * config.devices
        base = await db.final_count()
        paced = f" at {config.rate:,.0f}/s" if config.rate else ""
        stage(f"submitting {config.notifications:,} notifications ({expected:,} deliveries){paced}")
        submit_progress = Progress("accepted", config.notifications)
        deliver_progress = Progress("delivered (final)", expected)
        profiler = await self._profiler()
        servers = self._server_meter(db)
        meter = self._cpu_meter(sink)
        calls_before = await self.pg.calls() if self.pg is not None else None
        if servers is not None:
            servers.start()
        self._start_timeline()
        started = time.perf_counter()
        make = partial(self._item, self._prefix)
        await self._send(session, make, config.notifications, submit_progress, config.rate)
        submitted = time.perf_counter()
        submit_progress.finish()
        ended = await self._wait_final(db, expected, deliver_progress, base)
        deliver_progress.finish()
        memory = self._stop_timeline()
        window = Window(expected, started, submitted, ended, *meter.spent(), memory)
        if servers is not None:
            window.postgres, window.kafka = servers.stop()
        if self.pg is not None:
            window.calls = (calls_before, await self.pg.calls())
        if profiler is not None:
            window.profiles, notes = await profiler.stop()
            self.notes += notes
        return window

    async def _naive(self, db: BenchDb, fleet: Any, sink: SinkFleet) -> BaselineResult:
        config = self.config
        stage(f"naive baseline (at most {config.baseline_seconds:.0f} s)")
        progress = Progress("baseline", config.notifications * config.devices)
        result = await run_baseline(
            db,
            credentials=fleet.files.fcm_credentials,
            ca_file=fleet.tls.ca_file,
            send_base_url=sink.base_url,
            users=config.users,
            notifications=config.notifications,
            max_seconds=config.baseline_seconds,
            run_id=self.run_id,
            on_progress=progress.update,
        )
        progress.finish()
        await asyncio.sleep(sink.flush_delay())
        return result

    def _report(
        self,
        window: Window,
        herald: Delivered,
        baseline: dict[str, Any],
        load_before: list[float],
        peers: dict[str, dict[str, Any]] | None = None,
        storage: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
    ) -> dict[str, Any]:
        config = self.config
        deliveries = herald.deliveries
        elapsed = window.ended - window.started
        rate = deliveries / elapsed if elapsed > 0 else 0.0
        total_cpu = sum(window.herald_cpu.values())
        accepted_per_s = round(config.notifications / (window.submitted - window.started), 1)
        return {
            "backend": config.backend,
            "notifications": config.notifications,
            "deliveries": deliveries,
            "accepted_per_s": accepted_per_s,
            "deliveries_per_s": round(rate, 1),
            "latency_ms": percentiles(herald.latencies_ms),
            "peak_rss_mb": {p.name: round(p.peak_rss / 2**20, 1) for p in self.processes},
            "cpu_s_per_1000": round(1000 * total_cpu / deliveries, 4) if deliveries else 0.0,
            "lost": herald.lost,
            "duplicates": herald.duplicates,
            "baseline": baseline,
            "speedup": round(rate / baseline["deliveries_per_s"], 2)
            if baseline["deliveries_per_s"]
            else 0.0,
            # extras
            "scenario": "throughput",
            "rate": {
                "offered_per_s": config.rate,
                "accepted_per_s": accepted_per_s,
                "deliveries_per_s": round(rate, 1),
                "submit_s": round(window.submitted - window.started, 3),
            },
            "memory": window.memory,
            "memory_interval_s": config.rss_interval_s,
            # Production only: null on the embedded backend, which has no server, and whose
            # writes no counter outside SQLite's process sees (sqlite3's total_changes()
            # counts one connection's). herald.bench.server and herald.bench.pgstats.
            "postgres": with_rates(window.postgres, deliveries),
            "kafka": with_rates(window.kafka, deliveries),
            "rows_written": storage[0],
            "statements": storage[1],
            "peers": {name: _versus(block, rate) for name, block in (peers or {}).items()},
            "profiles": window.profiles,
            **self._extras(window, deliveries, elapsed, rate, load_before),
            "states": dict(herald.states),
        }

    def _extras(
        self,
        window: Window,
        deliveries: int,
        elapsed: float,
        rate: float,
        load_before: list[float],
    ) -> dict[str, Any]:
        config = self.config
        return {
            "users": config.users,
            "devices": config.devices,
            "workers": config.workers if config.backend == "production" else 1,
            "provider_latency_ms": config.latency_ms,
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s_by_channel": {"push": round(rate, 1)},
            "cpu_s": window.herald_cpu,
            "cpu_s_total": round(sum(window.herald_cpu.values()), 3),
            "fake_cpu_s": round(window.fake_cpu, 3),
            "fake_cpu_s_per_1000": round(1000 * window.fake_cpu / max(deliveries, 1), 4),
            "bench_client_cpu_s": round(window.own_cpu, 3),
            "sink_processes": config.sink_processes,
            "machine": machine(load_before),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Audience:
    """Users `<prefix><i>` for i < count, with devices, optionally subscribed to `topic`."""

    prefix: str
    count: int
    token_base: int = 0
    topic: str | None = None

    def user_id(self, i: int) -> str:
        return f"{self.prefix}{i}"


@dataclass
class Window:
    """The measured run: clocks (perf_counter), CPU seconds spent, memory over time."""

    expected: int
    started: float
    submitted: float
    ended: float
    herald_cpu: dict[str, float]
    fake_cpu: float
    own_cpu: float
    memory: dict[str, dict[str, Any]]
    postgres: dict[str, Any] | None = None  # server CPU over the window (production)
    kafka: dict[str, Any] | None = None  # broker CPU over the window (production)
    profiles: dict[str, str] = field(default_factory=dict)  # process -> profile file
    calls: tuple[Calls | None, Calls | None] = (None, None)  # pg_stat_statements, start / end


class CpuMeter:
    """CPU seconds spent since creation: per Herald process, by the fakes, by the harness."""

    def __init__(self, processes: list[HeraldProcess], fake_pids: list[int]) -> None:
        self.processes = processes
        self.fake_pids = fake_pids
        self.me = psutil.Process()
        self.before = self._read()

    def _read(self) -> tuple[dict[str, float], float, float]:
        own = self.me.cpu_times()
        return (
            {p.name: p.cpu() for p in self.processes},
            _cpu_of(self.fake_pids),
            own.user + own.system,
        )

    def spent(self) -> tuple[dict[str, float], float, float]:
        herald, fake, own = self._read()
        before = self.before[0]
        return (
            {name: round(herald[name] - before[name], 3) for name in before},
            fake - self.before[1],
            own - self.before[2],
        )


def _versus(block: dict[str, Any], herald_rate: float) -> dict[str, Any]:
    rate = block["deliveries_per_s"]
    return {**block, "speedup": round(herald_rate / rate, 2) if rate else 0.0}


def machine(load_before: list[float]) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def run_bench(config: BenchConfig) -> dict[str, Any]:
    config = config.resolved()
    if config.scenario == "broadcast":
        from herald.bench.broadcast import BroadcastBench

        return await BroadcastBench(config).run()
    return await Bench(config).run()
