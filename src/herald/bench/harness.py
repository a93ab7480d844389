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
4. Figures: rates, accept-to-receipt latency (the notification's created_at against the
   sink's receipt time), peak RSS and CPU of every Herald process (psutil), the fakes' CPU
   apart, lost and duplicated deliveries counted at the sink.
5. The naive baseline (`herald.bench.baseline`) on the same sink and database.
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
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from herald.bench.baseline import run_baseline
from herald.bench.db import BenchDb
from herald.bench.report import Progress, percentiles, stage
from herald.bench.sink import SinkFleet
from herald.security import generate_key

HERALD = str(Path(sys.executable).with_name("herald"))
DEFAULT_POSTGRES_URL = "postgresql://herald:herald@127.0.0.1:5432/herald"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"


class BenchError(RuntimeError):
    """The benchmark could not run (a dependency missing, Herald did not start)."""


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

    def cpu(self) -> float:
        try:
            assert self.ps is not None
            times = self.ps.cpu_times()
            return float(times.user + times.system)
        except psutil.Error:
            return 0.0

    def sample_rss(self) -> None:
        with contextlib.suppress(psutil.Error, AssertionError):
            assert self.ps is not None
            self.peak_rss = max(self.peak_rss, int(self.ps.memory_info().rss))

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


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

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        config = self.config
        load_before = [round(x, 2) for x in os.getloadavg()]
        made_dir = config.work_dir is None
        work = config.work_dir or Path(tempfile.mkdtemp(prefix="herald-bench-"))
        work.mkdir(parents=True, exist_ok=True)
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
        http = ["--port", str(port)]
        if self.config.backend == "embedded":
            roles: list[tuple[str, list[str]]] = [("serve", ["serve", *http])]
        else:
            roles = [("api", ["api", *http]), ("relay", ["relay"]), ("router", ["router"])]
            roles += [
                (f"worker-{i + 1}", ["worker", "--channel", "push"])
                for i in range(self.config.workers)
            ]
            roles.append(("scheduler", ["scheduler"]))
        # Only the process serving the API seeds HERALD_API_KEY: roles starting at once
        # would race on inserting it (process._seed_admin_key reads, then inserts).
        keyless = {k: v for k, v in env.items() if k != "HERALD_API_KEY"}
        for name, argv in roles:
            process = HeraldProcess(name, argv, work / f"{name}.log")
            process.start(env if argv[0] in ("serve", "api") else keyless)
            self.processes.append(process)
        sampler = asyncio.create_task(self._sample_rss())
        try:
            await self._wait_ready()
            yield
        finally:
            sampler.cancel()
            for process in self.processes:
                await asyncio.to_thread(process.stop)

    async def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise BenchError(f"herald {process.name} exited:\n{process.tail()}")
            if all(p.logged('"ready"') for p in self.processes):
                stage("Herald ready: " + ", ".join(p.name for p in self.processes))
                return
            await asyncio.sleep(0.2)
        raise BenchError("Herald did not become ready within 90 s")

    async def _sample_rss(self) -> None:
        while True:
            for process in self.processes:
                process.sample_rss()
            await asyncio.sleep(0.25)

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

    async def _create_users(self, session: aiohttp.ClientSession) -> None:
        config = self.config
        progress = Progress("users + devices", config.users)
        semaphore = asyncio.Semaphore(16)
        done = 0

        async def one(user: int) -> None:
            nonlocal done
            async with semaphore:
                async with session.put(f"/v1/users/u{user}", json={"timezone": "UTC"}) as answer:
                    if answer.status not in (200, 201):
                        raise BenchError(f"PUT user: {answer.status} {await answer.text()}")
                for device in range(config.devices):
                    body = {"platform": "android", "token": android_token(user, device)}
                    async with session.post(f"/v1/users/u{user}/devices", json=body) as answer:
                        if answer.status not in (200, 201):
                            raise BenchError(f"POST device: {answer.status} {await answer.text()}")
            done += 1
            progress.update(done)

        await asyncio.gather(*(one(u) for u in range(config.users)))
        progress.finish()

    def _items(self, prefix: str, count: int) -> list[dict[str, Any]]:
        return [
            {
                "idempotency_key": f"{prefix}{i}",
                "user_id": f"u{i % self.config.users}",
                "title": f"Bench #{i}",
                "body": "Your order has shipped",
                "data": {"order": str(i)},
                "channels": ["push"],
            }
            for i in range(count)
        ]

    async def _submit(
        self, session: aiohttp.ClientSession, items: list[dict[str, Any]], progress: Progress | None
    ) -> None:
        size = self.config.batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        for batch in batches:
            queue.put_nowait(batch)
        sent = 0

        async def client() -> None:
            nonlocal sent
            while not queue.empty():
                batch = queue.get_nowait()
                async with session.post(
                    "/v1/notifications/batch", json={"notifications": batch}
                ) as answer:
                    body = await answer.json()
                    if answer.status != 200 or body.get("accepted") != len(batch):
                        raise BenchError(f"batch refused: {answer.status} {str(body)[:500]}")
                sent += len(batch)
                if progress is not None:
                    progress.update(sent)

        await asyncio.gather(*(client() for _ in range(self.config.clients)))

    async def _wait_final(self, db: BenchDb, target: int, progress: Progress, base: int) -> float:
        """Poll until `target` deliveries are final; returns the perf_counter at the end."""
        last_change, last = time.perf_counter(), -1
        while True:
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
            for process in self.processes:
                if not process.alive():
                    raise BenchError(f"herald {process.name} exited:\n{process.tail()}")
            await asyncio.sleep(0.1)

    async def _measure(
        self, sink: SinkFleet, fleet: Any, load_before: list[float]
    ) -> dict[str, Any]:
        config = self.config
        expected = config.notifications * config.devices
        db = await BenchDb.open(self.database_url)
        me = psutil.Process()
        try:
            async with self._session() as session:
                await self._create_users(session)
                # Warm-up: connections, the OAuth2 token, consumer group assignment.
                warmup = min(config.users, 50)
                await self._submit(session, self._items(f"warmup-{self.run_id}-", warmup), None)
                await self._wait_final(
                    db, warmup * config.devices, Progress("warm-up", warmup * config.devices), 0
                )
                base = await db.final_count()
                cpu_before = {p.name: p.cpu() for p in self.processes}
                fake_before = _cpu_of(sink.pids())
                own_before = sum(me.cpu_times()[:2])
                prefix = f"bench-{self.run_id}-"
                items = self._items(prefix, config.notifications)
                stage(
                    f"submitting {config.notifications:,} notifications ({expected:,} deliveries)"
                )
                submit_progress = Progress("accepted", config.notifications)
                deliver_progress = Progress("delivered (final)", expected)
                started = time.perf_counter()
                submit = asyncio.create_task(self._submit(session, items, submit_progress))
                await submit
                submitted = time.perf_counter()
                submit_progress.finish()
                ended = await self._wait_final(db, expected, deliver_progress, base)
                deliver_progress.finish()
                cpu_after = {p.name: p.cpu() for p in self.processes}
                fake_cpu = _cpu_of(sink.pids()) - fake_before
                own_cpu = sum(me.cpu_times()[:2]) - own_before
            stage("counting receipts at the sink")
            await asyncio.sleep(sink.flush_delay())
            rows = await db.bench_deliveries(prefix)
            receipts: dict[str, int] = {}
            counts: Counter[str] = Counter()
            for delivery_id, _token, at in sink.receipts():
                counts[delivery_id] += 1
                receipts.setdefault(delivery_id, at)
            latencies = [
                (receipts[d] / 1e6) - accepted.timestamp() * 1000
                for d, _state, accepted in rows
                if d in receipts
            ]
            received_expected = sum(1 for d, _s, _a in rows if d in counts)
            lost = expected - received_expected
            duplicates = sum(counts[d] - 1 for d, _s, _a in rows if counts[d] > 1)
            states = Counter(state for _d, state, _a in rows)
            stage(f"naive baseline (at most {config.baseline_seconds:.0f} s)")
            baseline_progress = Progress("baseline", config.notifications * config.devices)
            baseline = await run_baseline(
                db,
                credentials=fleet.files.fcm_credentials,
                ca_file=fleet.tls.ca_file,
                send_base_url=sink.base_url,
                users=config.users,
                notifications=config.notifications,
                max_seconds=config.baseline_seconds,
                run_id=self.run_id,
                on_progress=baseline_progress.update,
            )
            baseline_progress.finish()
            await asyncio.sleep(sink.flush_delay())
        finally:
            await db.close()
        # The sinks flush on a timer: stop them to read every receipt of the baseline too.
        await asyncio.to_thread(sink.stop)
        base_counts: Counter[str] = Counter()
        base_latency: list[float] = []
        for delivery_id, _token, at in sink.receipts():
            if delivery_id in baseline.started_ns:
                base_counts[delivery_id] += 1
                if base_counts[delivery_id] == 1:
                    base_latency.append((at - baseline.started_ns[delivery_id]) / 1e6)
        elapsed = ended - started
        deliveries = sum(states[s] for s in ("sent", "delivered"))
        herald_cpu = {name: round(cpu_after[name] - cpu_before[name], 3) for name in cpu_before}
        total_cpu = sum(herald_cpu.values())
        rate = deliveries / elapsed if elapsed > 0 else 0.0
        report: dict[str, Any] = {
            "backend": config.backend,
            "notifications": config.notifications,
            "deliveries": deliveries,
            "accepted_per_s": round(config.notifications / (submitted - started), 1),
            "deliveries_per_s": round(rate, 1),
            "latency_ms": percentiles(latencies),
            "peak_rss_mb": {p.name: round(p.peak_rss / 2**20, 1) for p in self.processes},
            "cpu_s_per_1000": round(1000 * total_cpu / deliveries, 4) if deliveries else 0.0,
            "lost": lost,
            "duplicates": duplicates,
            "baseline": {
                "deliveries_per_s": round(baseline.deliveries_per_s, 1),
                "deliveries": baseline.deliveries,
                "notifications": baseline.notifications,
                "elapsed_s": round(baseline.elapsed_s, 2),
                "cpu_s_per_1000": round(1000 * baseline.cpu_s / baseline.deliveries, 4)
                if baseline.deliveries
                else 0.0,
                "latency_ms": percentiles(base_latency),
                "lost": len(baseline.started_ns) - len(base_counts),
                "duplicates": sum(c - 1 for c in base_counts.values()),
            },
            "speedup": round(rate / baseline.deliveries_per_s, 2)
            if baseline.deliveries_per_s
            else 0.0,
            # extras
            "users": config.users,
            "devices": config.devices,
            "workers": config.workers if config.backend == "production" else 1,
            "provider_latency_ms": config.latency_ms,
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s_by_channel": {"push": round(rate, 1)},
            "states": dict(states),
            "cpu_s": herald_cpu,
            "cpu_s_total": round(total_cpu, 3),
            "fake_cpu_s": round(fake_cpu, 3),
            "fake_cpu_s_per_1000": round(1000 * fake_cpu / max(deliveries, 1), 4),
            "bench_client_cpu_s": round(own_cpu, 3),
            "sink_processes": config.sink_processes,
            "machine": {
                "cpus": os.cpu_count(),
                "load_before": load_before,
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "python": sys.version.split()[0],
            },
            "notes": self.notes,
        }
        return report


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def run_bench(config: BenchConfig) -> dict[str, Any]:
    if config.backend not in ("embedded", "production"):
        raise BenchError(f"unknown backend {config.backend!r}")
    return await Bench(config).run()
