"""/metrics, /healthz and /readyz of one process: served by the API on its own port and,
with `--metrics-port` (HERALD_METRICS_PORT), by every role process on a port of its own,
so a Prometheus scraping each process sees the work done there.

The backlog gauges (outbox, waiting deliveries, scheduler lag) describe the whole database,
not the process: they are read at scrape time, by the processes that run the scheduler
only, so a fleet reports them once (docs/operations.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from herald.metrics import METRICS, Metrics
from herald.storage.operations import Backlog, OperationsRepository

if TYPE_CHECKING:
    from herald.runtime import Runtime

# A scrape every few seconds from two Prometheus replicas costs one read, not two.
BACKLOG_MIN_INTERVAL_SECONDS = 2.0


class BacklogGauges:
    def __init__(self, operations: OperationsRepository, metrics: Metrics = METRICS) -> None:
        self.operations = operations
        self.metrics = metrics
        self._read_at = float("-inf")

    async def refresh(self) -> None:
        if time.monotonic() - self._read_at < BACKLOG_MIN_INTERVAL_SECONDS:
            return
        self.set(await self.operations.backlog())
        self._read_at = time.monotonic()

    def set(self, backlog: Backlog) -> None:
        m = self.metrics
        m.outbox_depth.set(backlog.outbox_depth)
        m.outbox_oldest_age.set(backlog.outbox_oldest_age_seconds)
        for state, waiting in backlog.deliveries.items():
            m.deliveries_waiting.labels(state.value).set(waiting.count)
            m.deliveries_oldest_age.labels(state.value).set(waiting.oldest_age_seconds)
        m.scheduler_lag.set(backlog.scheduler_lag_seconds)
        m.workflow_timers_due.set(backlog.workflow_timers_due)
        m.workflow_timers_overdue.set(backlog.workflow_timer_lag_seconds)


async def render_metrics(runtime: Runtime) -> bytes:
    if runtime.backlog_gauges is None:
        return generate_latest(METRICS.registry)
    await runtime.backlog_gauges.refresh()
    return generate_latest(METRICS.registry) + generate_latest(METRICS.backlog_registry)


async def readiness(runtime: Runtime) -> tuple[bool, dict[str, Any]]:
    checks = {"database": await runtime.storage.database.ping(), "bus": await runtime.bus.healthy()}
    ready = all(checks.values())
    return ready, {"status": "ready" if ready else "unavailable", "checks": checks}


def ops_app(runtime: Runtime) -> Starlette:
    async def metrics(_request: Request) -> Response:
        return Response(await render_metrics(runtime), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        ready, body = await readiness(runtime)
        return JSONResponse(body, status_code=200 if ready else 503)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )
