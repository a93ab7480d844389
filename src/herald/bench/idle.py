"""`herald bench --idle SECONDS`: what a fleet with nothing to send costs.

The fleet starts as `herald bench` starts it (the provider fakes, `herald serve` embedded,
or on PostgreSQL + Kafka one process per role: api, relay, router, scheduler, and here one
worker per channel), sends a few notifications so that connections, caches and consumer
groups are warm, waits `settle_s`, then reads the CPU time (utime + stime, every thread) of
every Herald process from /proc/<pid>/stat at the start and at the end of the window.
Figures are % of one core over the window.

Beside them, over the same window: the PostgreSQL backends serving the bench's own database
(what Herald's statements cost the server), and, shared with whatever else runs on the
machine so only indicative, every PostgreSQL process and the Kafka broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from herald.bench.db import BenchDb
from herald.bench.harness import Bench, BenchConfig, machine
from herald.bench.report import stage
from herald.bench.sink import SinkFleet
from herald.domain.channels import Channel

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads) in seconds; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # fields 14 and 15 of stat(5)


def run_seconds(pid: int) -> float | None:
    """Time on a CPU of every live thread of `pid`, in ns precision (schedstat, field 1):
    /proc/<pid>/stat counts in clock ticks (10 ms), coarse for an idle process."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except OSError:
        return None
    return total / 1e9


@dataclass
class IdleConfig:
    seconds: float = 30.0
    settle_s: float = 10.0
    warmup: int = 20  # notifications before the window (0: none)


class IdleBench(Bench):
    def __init__(self, config: BenchConfig, idle: IdleConfig) -> None:
        super().__init__(config)
        self.idle = idle

    def _roles(self, http: list[str]) -> list[tuple[str, list[str]]]:
        if self.config.backend == "embedded":
            return super()._roles(http)
        roles = [("api", ["api", *http]), ("relay", ["relay"]), ("router", ["router"])]
        roles += [(f"worker-{c.value}", ["worker", "--channel", c.value]) for c in Channel]
        roles.append(("scheduler", ["scheduler"]))
        return roles

    async def _measure(
        self, sink: SinkFleet, fleet: Any, load_before: list[float]
    ) -> dict[str, Any]:
        from herald.bench.harness import Audience

        db = await BenchDb.open(self.database_url)
        try:
            if self.idle.warmup:
                async with self._session() as session:
                    await self._create_users(session, Audience("u", self.config.users))
                    await self._warm_up(session, db)
        finally:
            await db.close()
        stage(f"settling {self.idle.settle_s:g} s, then measuring {self.idle.seconds:g} s idle")
        await asyncio.sleep(self.idle.settle_s)
        self._check_alive()
        herald = {p.name: p.popen.pid for p in self.processes if p.popen is not None}
        before = {name: cpu_seconds(pid) for name, pid in herald.items()}
        precise_before = {name: run_seconds(pid) for name, pid in herald.items()}
        postgres_before = _postgres_cpu(self._database_name)
        kafka_before = _kafka_cpu()
        started = time.perf_counter()
        await asyncio.sleep(self.idle.seconds)
        window = time.perf_counter() - started
        self._check_alive()
        after = {name: cpu_seconds(pid) for name, pid in herald.items()}
        precise_after = {name: run_seconds(pid) for name, pid in herald.items()}
        postgres_after = _postgres_cpu(self._database_name)
        kafka_after = _kafka_cpu()

        def pct(spent: float) -> float:
            return round(100 * spent / window, 3)

        per_process = {name: pct((after[name] or 0.0) - (before[name] or 0.0)) for name in herald}
        precise = {
            name: pct((precise_after[name] or 0.0) - (precise_before[name] or 0.0))
            for name in herald
        }
        report: dict[str, Any] = {
            "scenario": "idle",
            "backend": self.config.backend,
            "window_s": round(window, 2),
            "settle_s": self.idle.settle_s,
            "warmup_notifications": self.idle.warmup,
            "cpu_pct_of_one_core": per_process,
            "cpu_pct_total": round(sum(per_process.values()), 3),
            # The same from schedstat (ns): what the 10 ms ticks of stat round away.
            "cpu_pct_precise": precise,
            "cpu_pct_precise_total": round(sum(precise.values()), 3),
            "machine": machine(load_before),
            "notes": self.notes,
        }
        if self.config.backend == "production":
            report["postgres_backends_pct"] = pct(_spent(postgres_before[0], postgres_after[0]))
            report["postgres_all_pct_shared"] = pct(_spent(postgres_before[1], postgres_after[1]))
            report["kafka_broker_pct_shared"] = pct(_spent(kafka_before, kafka_after))
        return report

    @property
    def _database_name(self) -> str:
        return self.database_url.rpartition("/")[2]


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings; a process new in the window counts from zero, one
    that ended in it is lost (backends of a pool are long-lived)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _processes(match: Any) -> dict[int, float]:
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if match(process.info["name"] or "", process.info["cmdline"] or []):
                seconds = cpu_seconds(process.pid)
                if seconds is not None:
                    found[process.pid] = seconds
    return found


def _postgres_cpu(database: str) -> tuple[dict[int, float], dict[int, float]]:
    """(the backends serving `database`, every PostgreSQL process)."""
    everything = _processes(lambda name, _cmd: name.startswith("postgres"))
    ours = _processes(
        lambda name, cmd: name.startswith("postgres") and f" {database} " in " ".join(cmd) + " "
    )
    return ours, everything


def _kafka_cpu() -> dict[int, float]:
    return _processes(
        lambda name, cmd: name == "java" and any("kafka.Kafka" in part for part in cmd)
    )


async def run_idle(config: BenchConfig, idle: IdleConfig) -> dict[str, Any]:
    config = BenchConfig(
        backend=config.backend,
        users=min(config.users, max(idle.warmup, 1)),
        latency_ms=config.latency_ms,
        sink_processes=1,
        keep=config.keep,
        extra_env=config.extra_env,
        baseline=False,
        herald_src=config.herald_src,  # else an idle pair would measure this tree twice
    ).resolved()
    return await IdleBench(config, idle).run()


def idle_table(report: dict[str, Any]) -> str:
    lines = [
        f"idle fleet ({report['backend']}), {report['window_s']:g} s window "
        f"after {report['settle_s']:g} s settling: % of one core",
        "",
        "| process | CPU % (stat) | CPU % (schedstat) |",
        "| --- | ---: | ---: |",
    ]
    precise = report["cpu_pct_precise"]
    for name, value in report["cpu_pct_of_one_core"].items():
        lines.append(f"| {name} | {value:.2f} | {precise[name]:.3f} |")
    lines.append(
        f"| **all Herald** | **{report['cpu_pct_total']:.2f}** "
        f"| **{report['cpu_pct_precise_total']:.3f}** |"
    )
    for key, label in (
        ("postgres_backends_pct", "PostgreSQL backends of the bench database"),
        ("postgres_all_pct_shared", "every PostgreSQL process (shared)"),
        ("kafka_broker_pct_shared", "Kafka broker (shared)"),
    ):
        if key in report:
            lines.append(f"| {label} | {report[key]:.2f} | |")
    return "\n".join(lines)
