"""`herald bench --scenario workflow`: how fast the scheduler's workflow runner does steps,
and how late it fires due timers, with many timers pending that are not yet due.

1. A fresh database (embedded: SQLite in a temporary directory; production: a database of
   its own on HERALD_DATABASE_URL's server), migrated.
2. `pending` parked runs, each waiting on a 30-day delay: the timers a busy deployment
   holds, which a pass must not read or keep in memory.
3. `runs` measured runs of "send; delay `delay_s`; send", triggered at once, and `workers`
   runners (each with its own connections, as separate schedulers would be) firing them.
4. Figures: steps per second while the runs' first steps are done (a send and the start of
   a delay per run), the timer lag of the delays (when each was taken up, against when it
   was due: p50/p99/max), lost or repeated steps, and the runners' memory: this process's
   RSS before they start and its peak while they fire (the runners are this process's
   only work then), so two sizes of `pending` show whether parked timers cost memory.

The runners write each send's notification (the relay reads it as its outbox); routing and
sending them is the throughput scenario's part, not this one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import sqlalchemy as sa

from herald.bench.errors import BenchError
from herald.bench.report import percentiles
from herald.domain.workflows import parse_workflow
from herald.storage import Storage, new_id, open_storage
from herald.storage import schema as t
from herald.storage.workflows import NewRun
from herald.workflows.runner import WorkflowRunner

MEASURED = "bench-flow"
PARKED = "bench-parked"
CHUNK = 1000


def _workflows(delay_s: float) -> tuple[Any, Any]:
    measured = parse_workflow(
        MEASURED,
        {
            "steps": [
                {"id": "first", "type": "send", "channels": ["in_app"]},
                {"id": "pause", "type": "delay", "seconds": max(1, round(delay_s))},
                {"id": "second", "type": "send", "channels": ["in_app"]},
            ]
        },
    )
    parked = parse_workflow(
        PARKED,
        {
            "steps": [
                {"id": "park", "type": "delay", "seconds": 30 * 86400},
                {"id": "send", "type": "send", "channels": ["in_app"]},
            ]
        },
    )
    return measured, parked


async def _trigger(storage: Storage, workflow: Any, count: int, prefix: str) -> None:
    for start in range(0, count, CHUNK):
        await storage.workflows.trigger(
            [
                NewRun(new_id(), workflow, f"{prefix}{n}", prefix, "bench", {"title": "bench"})
                for n in range(start, min(count, start + CHUNK))
            ]
        )


async def _park(storage: Storage) -> None:
    """The parked runs become timers due in 30 days, as if their delay had begun."""
    runs = t.workflow_runs
    async with storage.database.transaction() as db:
        await db.execute(
            runs.update()
            .where(runs.c.workflow_key == PARKED)
            .values(due_at=storage.database.clock.now() + timedelta(days=30))
        )


async def _step_times(storage: Storage, step: str) -> list[tuple[Any, Any, str]]:
    s, r = t.workflow_run_steps.c, t.workflow_runs.c
    async with storage.database.reading() as db:
        rows = await db.execute(
            sa.select(s.started_at, s.at, s.status)
            .join(t.workflow_runs, r.id == s.run_id)
            .where(r.workflow_key == MEASURED, s.step_id == step)
        )
        return [(row.started_at, row.at, row.status) for row in rows]


@dataclass
class Firing:
    """The runners' own step counts (so the bench adds no load on the database)."""

    done: list[int]
    ticked: asyncio.Event = field(default_factory=asyncio.Event)
    # This process's RSS after each pass: the runners' own memory while they work, next
    # to what it was before they started (the parking and the triggers are done by then).
    rss_peak: int = 0

    def sample_rss(self) -> None:
        self.rss_peak = max(self.rss_peak, psutil.Process().memory_info().rss)

    async def until(self, steps: int, timeout: float) -> None:
        """Until the runners have done `steps` steps between them, or the timeout."""
        deadline = time.monotonic() + timeout
        while sum(self.done) < steps and time.monotonic() < deadline:
            self.ticked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ticked.wait(), max(0.0, deadline - time.monotonic()))


async def _fire(runners: list[WorkflowRunner], firing: Firing, stop: asyncio.Event) -> None:
    """Every runner ticks as a scheduler does (here every 50 ms), counting its steps."""

    async def loop(index: int) -> None:
        while not stop.is_set():
            firing.done[index] += await runners[index].tick()
            firing.sample_rss()
            firing.ticked.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    await asyncio.gather(*(loop(i) for i in range(len(runners))))


async def _database(backend: str, work: Path) -> tuple[str, str | None]:
    """(the bench database's URL, the admin URL to drop it with: production only)."""
    if backend == "embedded":
        return f"sqlite:///{work / 'herald.db'}", None
    import os

    from herald.bench.harness import DEFAULT_POSTGRES_URL

    admin_url = os.environ.get("HERALD_DATABASE_URL") or DEFAULT_POSTGRES_URL
    if not admin_url.startswith("postgres"):
        raise BenchError("production needs HERALD_DATABASE_URL=postgresql://...")
    name = f"herald_bench_wf_{new_id()[:8]}"
    admin = await asyncpg.connect(admin_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{admin_url.rpartition('/')[0]}/{name}", admin_url


async def run_workflow_bench(
    backend: str, runs: int, pending: int, workers: int, delay_s: float = 2.0
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="herald-bench-wf-"))
    url, admin_url = await _database(backend, work)
    storages = [open_storage(url) for _ in range(max(1, workers))]
    try:
        return await _measure(storages, backend, runs, pending, delay_s)
    finally:
        for storage in storages:
            await storage.database.close()
        if admin_url is not None:
            admin = await asyncpg.connect(admin_url, timeout=10)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}"')
            finally:
                await admin.close()


async def _measure(
    storages: list[Storage], backend: str, runs: int, pending: int, delay_s: float
) -> dict[str, Any]:
    main = storages[0]
    await main.database.migrate()
    measured, parked = _workflows(delay_s)
    started = time.monotonic()
    await _trigger(main, parked, pending, "parked-")
    await _park(main)
    parked_s = time.monotonic() - started

    runners = [WorkflowRunner(s.workflow_timers, s.database.clock) for s in storages]
    stop = asyncio.Event()
    t0 = time.monotonic()
    await _trigger(main, measured, runs, "u")
    triggered_s = time.monotonic() - t0
    firing = Firing([0] * len(runners))
    rss_before = psutil.Process().memory_info().rss
    task = asyncio.create_task(_fire(runners, firing, stop))
    await firing.until(runs, 600)  # every run's first send (and its delay begun)
    first_phase_s = time.monotonic() - t0
    await firing.until(3 * runs, delay_s + 120)
    stop.set()
    await task
    per_runner = firing.done
    pauses = await _step_times(main, "pause")
    lags = [
        (at - (began + timedelta(seconds=max(1, round(delay_s))))).total_seconds() * 1000
        for began, at, status in pauses
        if status == "done" and began is not None and at is not None
    ]
    seconds = sum(1 for *_, status in await _step_times(main, "second") if status == "done")
    parked_left = await main.workflow_timers.pending() - (runs - seconds)
    return {
        "scenario": "workflow",
        "backend": backend,
        "runs": runs,
        "pending_timers": pending,
        "schedulers": len(runners),
        "parking_s": round(parked_s, 1),
        "trigger_s": round(triggered_s, 2),
        "first_phase_s": round(first_phase_s, 2),
        "steps_per_s": round(2 * runs / first_phase_s, 1) if first_phase_s else 0.0,
        "timer_lag_ms": percentiles(lags),
        "steps_done": sum(per_runner),
        "steps_expected": 3 * runs,
        "steps_by_scheduler": per_runner,
        "lost": runs - seconds,
        "duplicates": max(0, sum(per_runner) - 3 * runs),
        "parked_still_pending": parked_left,
        "peak_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "scheduler_rss_mb": {
            "before": round(rss_before / 2**20, 1),
            "peak": round(firing.rss_peak / 2**20, 1),
            "growth": round((firing.rss_peak - rss_before) / 2**20, 1),
        },
    }


def workflow_table(report: dict[str, Any]) -> str:
    lag, rss = report["timer_lag_ms"], report["scheduler_rss_mb"]
    lines = [
        f"herald bench --scenario workflow: {report['backend']} backend, {report['runs']} runs "
        f"(send; delay; send), {report['pending_timers']} timers pending, "
        f"{report['schedulers']} schedulers",
        f"steps/s (first steps of every run): {report['steps_per_s']}",
        f"timer lag (ms): p50 {lag['p50']}  p99 {lag['p99']}  max {lag['max']}",
        f"steps done {report['steps_done']} of {report['steps_expected']} "
        f"(by scheduler: {report['steps_by_scheduler']}); lost runs {report['lost']}, "
        f"duplicate steps {report['duplicates']}",
        f"parked timers still pending: {report['parked_still_pending']}; "
        f"RSS at the end {report['peak_rss_mb']} MB",
        f"scheduler RSS (MB): {rss['before']} before the runners started, peak {rss['peak']} "
        f"while they fired (growth {rss['growth']})",
    ]
    return "\n".join(lines)
