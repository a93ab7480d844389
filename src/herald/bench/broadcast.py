"""`herald bench --scenario broadcast`: critical latency while a bulk broadcast fans out.

1. `subscribers` users (one android device each) subscribed to one topic, and `users`
   other users for the trickle.
2. Quiet: a trickle of critical notifications at `trickle_rate` per second for
   `trickle_seconds`, nothing else running: the reference latency.
3. Busy: a low-priority broadcast to the topic (`POST /v1/broadcasts`) and, until every
   one of its deliveries is final, the same trickle to the other users.
4. Figures: the fan-out rate (recipients routed per second, deliveries per second), the
   trickle's accept-to-receipt latency in both phases, lost and duplicated deliveries of
   the broadcast and of both trickles (counted at the sink), and Herald's CPU and memory
   over the busy phase.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp

from herald.bench.db import FINAL_STATES, BenchDb
from herald.bench.errors import BenchError
from herald.bench.figures import Delivered, Receipts, delivered
from herald.bench.harness import Audience, Bench, machine
from herald.bench.memory import memory_lines
from herald.bench.report import Progress, machine_line, percentiles, stage
from herald.bench.server import with_rates
from herald.bench.sink import SinkFleet

TOPIC = "bench-news"
SUBSCRIBER_TOKENS = 5_000_000  # token numbers of the subscribers, apart from the trickle's
MAX_TRICKLE = 10_000_000  # the busy trickle stops with the broadcast, long before this


@dataclass
class Fanout:
    broadcast_id: str
    planned: int
    trickle_sent: int
    routed_s: float  # from the POST until every recipient is routed
    final_s: float  # from the POST until every broadcast delivery is final
    herald_cpu: dict[str, float]
    memory: dict[str, dict[str, Any]]
    postgres: dict[str, Any] | None = None  # server CPU over the busy phase (production)
    kafka: dict[str, Any] | None = None
    profiles: dict[str, str] | None = None


class BroadcastBench(Bench):
    @property
    def _quiet_prefix(self) -> str:
        return f"quiet-{self.run_id}-"

    @property
    def _busy_prefix(self) -> str:
        return f"busy-{self.run_id}-"

    async def _measure(
        self, sink: SinkFleet, fleet: Any, load_before: list[float]
    ) -> dict[str, Any]:
        config = self.config
        db = await BenchDb.open(self.database_url)
        try:
            async with self._session() as session:
                await self._create_users(session, Audience("u", config.users), "trickle users")
                subscribers = Audience("s", config.subscribers, SUBSCRIBER_TOKENS, TOPIC)
                await self._create_users(session, subscribers, "subscribers")
                await self._warm_up(session, db)
                quiet_sent = await self._trickle_alone(session, db)
                fanout = await self._during_broadcast(session, db, sink)
            stage("counting receipts at the sink")
            await asyncio.sleep(sink.flush_delay())
            receipts = Receipts.read(sink.receipts())
            devices = config.devices
            quiet = delivered(
                await db.bench_deliveries(self._quiet_prefix), receipts, quiet_sent * devices
            )
            busy = delivered(
                await db.bench_deliveries(self._busy_prefix),
                receipts,
                fanout.trickle_sent * devices,
            )
            bulk = delivered(
                await db.broadcast_deliveries(fanout.broadcast_id),
                receipts,
                fanout.planned * devices,
            )
        finally:
            await db.close()
        return self._broadcast_report(fanout, quiet, busy, bulk, load_before)

    def _critical(self, prefix: str, i: int) -> dict[str, Any]:
        return self._item(prefix, i, priority="critical")

    async def _trickle_alone(self, session: aiohttp.ClientSession, db: BenchDb) -> int:
        config = self.config
        count = max(1, round(config.trickle_rate * config.trickle_seconds))
        stage(f"critical trickle alone: {count} at {config.trickle_rate:g}/s")
        base = await db.final_count()
        make = partial(self._critical, self._quiet_prefix)
        progress = Progress("critical, alone", count)
        sent = await self._send(session, make, count, progress, config.trickle_rate)
        progress.finish()
        expected = sent * config.devices
        await self._wait_final(db, expected, Progress("trickle final", expected), base)
        return sent

    async def _during_broadcast(
        self, session: aiohttp.ClientSession, db: BenchDb, sink: SinkFleet
    ) -> Fanout:
        config = self.config
        base = await db.final_count()
        profiler = await self._profiler()
        servers = self._server_meter(db)
        meter = self._cpu_meter(sink)
        if servers is not None:
            servers.start()
        self._start_timeline()
        stop = asyncio.Event()
        posted = time.perf_counter()
        broadcast_id, planned = await self._post_broadcast(session)
        stage(f"broadcast {broadcast_id} to {planned:,} subscribers, critical trickle beside it")
        make = partial(self._critical, self._busy_prefix)
        trickle = asyncio.create_task(
            self._send(session, make, MAX_TRICKLE, None, config.trickle_rate, stop)
        )
        try:
            routed_at, final_at = await self._follow(session, broadcast_id, planned)
        finally:
            stop.set()
            sent = await trickle
        expected = (planned + sent) * config.devices
        await self._wait_final(db, expected, Progress("all final", expected), base)
        herald_cpu = meter.spent()[0]
        postgres, kafka = servers.stop() if servers is not None else (None, None)
        profiles: dict[str, str] = {}
        if profiler is not None:
            profiles, notes = await profiler.stop()
            self.notes += notes
        return Fanout(
            broadcast_id=broadcast_id,
            planned=planned,
            trickle_sent=sent,
            routed_s=routed_at - posted,
            final_s=final_at - posted,
            herald_cpu=herald_cpu,
            memory=self._stop_timeline(),
            postgres=postgres,
            kafka=kafka,
            profiles=profiles,
        )

    async def _post_broadcast(self, session: aiohttp.ClientSession) -> tuple[str, int]:
        body = {
            "topic": TOPIC,
            "notification": {
                "title": "Breaking",
                "body": "A bulk broadcast",
                "channels": ["push"],
                "priority": "low",
            },
        }
        headers = {"Idempotency-Key": f"broadcast-{self.run_id}"}
        async with session.post("/v1/broadcasts", json=body, headers=headers) as answer:
            created = await answer.json()
            if answer.status != 202:
                raise BenchError(f"broadcast refused: {answer.status} {str(created)[:500]}")
        return str(created["id"]), int(created["planned"])

    async def _follow(
        self, session: aiohttp.ClientSession, broadcast_id: str, planned: int
    ) -> tuple[float, float]:
        """Polls the broadcast's progress until every delivery is final; returns the
        perf_counter when all recipients were routed and when all were final."""
        target = planned * self.config.devices
        progress = Progress("broadcast final", target)
        routed_at: float | None = None
        last, last_change = -1, time.perf_counter()
        while True:
            async with session.get(f"/v1/broadcasts/{broadcast_id}") as answer:
                body = await answer.json()
            now = time.perf_counter()
            if routed_at is None and int(body.get("routed", 0)) >= planned:
                routed_at = now
            final = sum(int(body.get(f"deliveries_{state}", 0)) for state in FINAL_STATES)
            progress.update(final)
            if final >= target:
                progress.finish()
                return routed_at or now, now
            if final != last:
                last, last_change = final, now
            elif now - last_change > self.config.stall_timeout_s:
                self.notes.append(f"broadcast stalled at {final} of {target} final deliveries")
                return routed_at or now, now
            self._check_alive()
            await asyncio.sleep(0.5)

    def _broadcast_report(
        self,
        fanout: Fanout,
        quiet: Delivered,
        busy: Delivered,
        bulk: Delivered,
        load_before: list[float],
    ) -> dict[str, Any]:
        config = self.config
        total_cpu = sum(fanout.herald_cpu.values())
        handled = bulk.deliveries + busy.deliveries
        return {
            "scenario": "broadcast",
            "backend": config.backend,
            "workers": config.workers if config.backend == "production" else 1,
            "priority_pool": config.priority_pool,
            "subscribers": config.subscribers,
            "devices": config.devices,
            "provider_latency_ms": config.latency_ms,
            "broadcast": {
                "id": fanout.broadcast_id,
                "planned": fanout.planned,
                "deliveries": bulk.deliveries,
                "routed_s": round(fanout.routed_s, 2),
                "final_s": round(fanout.final_s, 2),
                "recipients_routed_per_s": _per_s(fanout.planned, fanout.routed_s),
                "deliveries_per_s": _per_s(bulk.deliveries, fanout.final_s),
                "lost": bulk.lost,
                "duplicates": bulk.duplicates,
                "states": dict(bulk.states),
            },
            "critical": {
                "rate_per_s": config.trickle_rate,
                "alone": _trickle(quiet),
                "during_broadcast": _trickle(busy),
            },
            "lost": bulk.lost + quiet.lost + busy.lost,
            "duplicates": bulk.duplicates + quiet.duplicates + busy.duplicates,
            "cpu_s": fanout.herald_cpu,
            "cpu_s_per_1000": round(1000 * total_cpu / handled, 4) if handled else 0.0,
            # production only: the servers' CPU over the busy phase, per delivery handled
            "postgres": with_rates(fanout.postgres, handled),
            "kafka": with_rates(fanout.kafka, handled),
            "profiles": fanout.profiles or {},
            "peak_rss_mb": {p.name: round(p.peak_rss / 2**20, 1) for p in self.processes},
            "memory": fanout.memory,
            "machine": machine(load_before),
            "notes": self.notes,
        }


def _per_s(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _trickle(figures: Delivered) -> dict[str, Any]:
    return {
        "sent": figures.expected,
        "deliveries": figures.deliveries,
        "latency_ms": percentiles(figures.latencies_ms),
        "lost": figures.lost,
        "duplicates": figures.duplicates,
    }


def broadcast_table(report: dict[str, Any]) -> str:
    """The human-readable summary of a broadcast scenario report."""
    fan = report["broadcast"]
    critical = report["critical"]
    lines = [
        f"herald bench --scenario broadcast: {report['backend']} backend, "
        f"{report['workers']} push worker process(es)"
        f"{' + a priority-lane pool' if report.get('priority_pool') else ''}, provider latency "
        f"{report['provider_latency_ms']} ms",
        machine_line(report),
        "",
        f"broadcast to {fan['planned']:,} subscribers (low priority): all routed in "
        f"{fan['routed_s']} s ({fan['recipients_routed_per_s']:,.0f} recipients/s), all final "
        f"in {fan['final_s']} s ({fan['deliveries_per_s']:,.0f} deliveries/s), "
        f"lost {fan['lost']}, duplicates {fan['duplicates']}",
        "",
        f"critical trickle at {critical['rate_per_s']:g}/s, accept to provider (ms):",
        f"  {'':20}{'sent':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'lost':>6}{'dup':>5}",
    ]
    for label, key in (("alone", "alone"), ("during broadcast", "during_broadcast")):
        row = critical[key]
        latency = row["latency_ms"]
        lines.append(
            f"  {label:20}{row['sent']:>7}{latency['p50']:>9.1f}{latency['p95']:>9.1f}"
            f"{latency['p99']:>9.1f}{latency['max']:>9.1f}{row['lost']:>6}{row['duplicates']:>5}"
        )
    lines += ["", f"Herald CPU s per 1,000 deliveries (busy phase): {report['cpu_s_per_1000']:.3f}"]
    for name, label in (("postgres", "PostgreSQL server"), ("kafka", "Kafka broker")):
        if report.get(name):
            lines.append(
                f"{label} CPU s per 1,000 (busy phase): {report[name]['cpu_s_per_1000']:.3f}"
            )
    for name, path in (report.get("profiles") or {}).items():
        lines.append(f"profile of {name}: {path}")
    lines += memory_lines(report["memory"])
    if report.get("notes"):
        lines += ["", *report["notes"]]
    return "\n".join(lines)
