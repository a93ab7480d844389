"""Running roles: `herald serve` runs all of them in one process; `herald api`, `relay`,
`router`, `worker --channel C` and `scheduler` run one each. SIGTERM or SIGINT stops the
loops after their current batch (committed), then the API, then closes connections."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog
import uvicorn

from herald.bus.interface import LANES, BusUnavailable, Lane
from herald.bus.memory import MemoryBus
from herald.collector import settle_after_startup
from herald.config import Settings
from herald.domain import Channel
from herald.ops_server import BacklogGauges, ops_app
from herald.outages import is_outage
from herald.roles import Backoff, describe_error, wait_for_event
from herald.runtime import Runtime
from herald.security import generate_key, key_from_secret
from herald.storage import PlanMode
from herald.storage.migrate import pending
from herald.workers.worker import ChannelWorker

log = structlog.get_logger()
ROLES = ("api", "relay", "router", "worker", "scheduler")


class StartupError(RuntimeError):
    """A start-up problem that waiting will not fix (configuration, schema); the message
    names it and the process exits."""


class DependencyUnavailable(StartupError):
    """The database or the bus cannot be reached at start: waited out with backoff."""


@dataclass
class Plan:
    roles: Sequence[str]
    channels: Sequence[Channel] = field(default_factory=lambda: list(Channel))
    lanes: Sequence[Lane] = LANES  # a router or worker for one lane only: a dedicated pool
    host: str = "127.0.0.1"
    port: int = 8080
    migrate: bool = True
    metrics_port: int | None = None  # this process's /metrics, /healthz, /readyz


async def start_runtime(settings: Settings, *, migrate: bool) -> Runtime:
    """One attempt: connect, check (or migrate) the schema, start the bus."""
    runtime = Runtime.from_settings(settings)
    try:
        await _start(runtime, migrate=migrate)
    except BaseException:
        try:
            await runtime.close()
        except Exception as error:  # half-started: what did start is closed as it can be
            log.debug("closing a runtime that did not start", error=describe_error(error))
        raise
    return runtime


async def _start(runtime: Runtime, *, migrate: bool) -> None:
    database = runtime.storage.database.describe()
    outdated = False
    try:
        if migrate:
            await asyncio.wait_for(runtime.storage.database.migrate(), 30)
        else:
            outdated = await asyncio.wait_for(pending(runtime.storage.database.engine), 30)
    except Exception as error:
        kind = DependencyUnavailable if is_outage(error) else StartupError
        raise kind(f"database unreachable at {database}: {describe_error(error)}") from error
    if outdated:
        raise StartupError(
            f"the database schema at {database} is missing or out of date: "
            "run `herald migrate` first"
        )
    try:
        await runtime.start(migrate=False)
        await _seed_admin_key(runtime)
    except BusUnavailable as error:
        raise DependencyUnavailable(f"bus unreachable: {error}") from error
    except StartupError:
        raise
    except Exception as error:
        if is_outage(error):
            raise DependencyUnavailable(
                f"database unreachable at {database}: {describe_error(error)}"
            ) from error
        raise


async def start_when_available(
    settings: Settings, *, migrate: bool, stop: asyncio.Event, backoff: Backoff | None = None
) -> Runtime | None:
    """Start, waiting out a database or bus that is not reachable yet (capped exponential
    backoff, each attempt logged) instead of exiting for a supervisor to restart us. None
    when `stop` is set while waiting."""
    backoff = backoff or Backoff(initial=0.5, cap=15.0)
    while True:
        try:
            runtime = await start_runtime(settings, migrate=migrate)
        except DependencyUnavailable as error:
            delay = backoff.next_delay()
            log.warning(
                "cannot start yet; retrying",
                error=str(error),
                attempt=backoff.failures,
                retry_in_s=round(delay, 2),
            )
            if await wait_for_event(stop, delay):
                return None
            continue
        if backoff.failures:
            log.info("dependencies reachable: starting", attempts=backoff.failures + 1)
        return runtime


async def _seed_admin_key(runtime: Runtime) -> None:
    """HERALD_API_KEY (development, tests): make that exact key an admin key."""
    presented = runtime.settings.api_key and key_from_secret(runtime.settings.api_key)
    if runtime.settings.api_key and not presented:
        raise StartupError(
            "HERALD_API_KEY must look like hk_<16 hex>_<secret>; `herald keys create` prints one"
        )
    if presented:  # an insert that ignores an existing id: several roles may start at once
        await runtime.storage.keys.create_api_key(
            presented.id, presented.secret_hash, ["admin"], "HERALD_API_KEY"
        )


def example_key() -> str:
    return generate_key().token


# The roles whose processes run little but the per-delivery statements, thousands of times a
# second: their connections keep generic plans (herald.storage.dialect.PlanMode).
HOT_PATH_ROLES = frozenset({"relay", "router", "worker"})


def postgres_plans(configured: str, roles: Sequence[str]) -> str:
    """HERALD_POSTGRES_PLANS for a process running `roles`, "auto" resolved."""
    if configured != "auto":
        return configured
    plans = PlanMode.GENERIC if set(roles) <= HOT_PATH_ROLES else PlanMode.PER_EXECUTION
    return plans.value


async def run(settings: Settings, plan: Plan) -> None:
    if "api" in plan.roles:
        # --host/--port win over HERALD_HOST/HERALD_PORT, and the default public URL
        # (status callbacks, unsubscribe links) must name where the API really listens.
        settings = settings.model_copy(update={"host": plan.host, "port": plan.port})
    plans = postgres_plans(settings.postgres_plans, plan.roles)
    settings = settings.model_copy(update={"postgres_plans": plans})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = await start_when_available(settings, migrate=plan.migrate, stop=stop)
    if runtime is None:
        log.info("stopped before starting")
        return
    try:
        await _run_roles(runtime, plan, stop)
    finally:
        await runtime.close()
        log.info("stopped cleanly")


async def _run_roles(runtime: Runtime, plan: Plan, stop: asyncio.Event) -> None:
    roles: list[Coroutine[Any, Any, None]] = []
    server: uvicorn.Server | None = None
    if "worker" in plan.roles:
        providers = runtime.build_providers()
        await providers.start()
        settings = runtime.worker_settings()
        for channel in plan.channels:
            worker = ChannelWorker(
                channel, runtime.storage.deliveries, runtime.bus, providers, runtime.clock, settings
            )
            roles.append(worker.run(stop, plan.lanes))
    if "relay" in plan.roles:
        roles.append(runtime.make_relay().run(stop))
    if "router" in plan.roles:
        roles.append(runtime.router().run(stop, plan.lanes))
    if "scheduler" in plan.roles:
        runtime.backlog_gauges = BacklogGauges(runtime.storage.operations)
        scheduler = runtime.scheduler()
        if isinstance(runtime.bus, MemoryBus):
            # In-process messages died with the previous process: republish its work.
            await scheduler.sweep(older_than_seconds=0)
        roles.append(scheduler.run(stop))
    if "api" in plan.roles:
        server = _api_server(runtime, plan)
        roles.append(server.serve())
    metrics_server = _metrics_server(runtime, plan)
    if metrics_server is not None:
        roles.append(metrics_server.serve())
    _banner(runtime, plan)
    _Readiness([server, metrics_server])
    settle_after_startup()
    async with asyncio.TaskGroup() as group:
        for role in roles:
            group.create_task(role)
        group.create_task(_stop_api_on(stop, server))
        group.create_task(_stop_api_on(stop, metrics_server))
        await stop.wait()
        log.info("stopping: finishing in-flight batches")


class _Readiness:
    """Logs `ready` once the API and the metrics port listen: from the startup of the last
    server to listen, before it can answer anything (a request answered in between would
    be logged before `ready`)."""

    def __init__(self, servers: Sequence[uvicorn.Server | None]) -> None:
        self.waiting = 0
        for server in servers:
            if isinstance(server, _ApiServer):
                server.on_started = self.started
                self.waiting += 1
        if not self.waiting:
            log.info("ready")

    def started(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            log.info("ready")


async def _stop_api_on(stop: asyncio.Event, server: uvicorn.Server | None) -> None:
    await stop.wait()
    if server is not None:
        server.should_exit = True
        if isinstance(server, _ApiServer):
            server.exiting.set()


class _ApiServer(uvicorn.Server):
    """uvicorn's main loop wakes ten times a second to see whether it should exit; this
    one once a second (the resolution of the Date header it refreshes), and at once when
    `exiting` is set. When it stops serving it calls `on_exit` before uvicorn waits for the
    open requests: an endless one (an event stream) must end then, or uvicorn waits out
    its graceful timeout and cancels it with an error."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.exiting = asyncio.Event()
        self.on_exit = on_exit
        self.on_started: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:  # listening; nothing served yet
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler (it holds SIGTERM and SIGINT while it serves)."""
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: hand the wake-up to the loop
            self._loop.call_soon_threadsafe(self.exiting.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0  # on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864_000
            await wait_for_event(self.exiting, 1.0)
        if self.on_exit is not None:
            self.on_exit()


def _api_server(runtime: Runtime, plan: Plan) -> uvicorn.Server:
    from herald.api.app import create_app

    config = uvicorn.Config(
        create_app(runtime),
        host=plan.host,
        port=plan.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=runtime.settings.http_keepalive_seconds,
    )
    return _ApiServer(config, on_exit=runtime.end_streams)


def _metrics_server(runtime: Runtime, plan: Plan) -> uvicorn.Server | None:
    port = _metrics_port(runtime, plan)
    if port is None:
        return None
    config = uvicorn.Config(
        ops_app(runtime),
        host=runtime.settings.metrics_host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    return _ApiServer(config)


def _banner(runtime: Runtime, plan: Plan) -> None:
    providers = runtime.providers.describe() if runtime.providers else {}
    log.info(
        "herald starting",
        roles=list(plan.roles),
        listen=f"http://{plan.host}:{plan.port}" if "api" in plan.roles else None,
        metrics=_metrics_url(runtime, plan),
        database=runtime.storage.database.describe(),
        postgres_plans=runtime.settings.postgres_plans if runtime.settings.uses_postgres else None,
        bus=runtime.bus.describe(),
        providers=providers or None,
    )


def _metrics_port(runtime: Runtime, plan: Plan) -> int | None:
    return plan.metrics_port if plan.metrics_port is not None else runtime.settings.metrics_port


def _metrics_url(runtime: Runtime, plan: Plan) -> str | None:
    port = _metrics_port(runtime, plan)
    return f"http://{runtime.settings.metrics_host}:{port}/metrics" if port is not None else None
