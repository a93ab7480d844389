"""The `herald` command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from herald.config import ConfigurationError, Settings
from herald.dlq_cli import dlq_group
from herald.domain import Channel
from herald.logs import configure

if TYPE_CHECKING:
    from herald.bus.interface import Lane
    from herald.process import Plan


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(coroutine)


def _settings() -> Settings:
    """The settings, or one line on stderr and exit code 2 when they cannot work; unknown
    HERALD_* variables and incomplete credentials are logged (one line each)."""
    try:
        settings = Settings()
    except ValidationError as error:
        _refuse(_validation_line(error))
    except SettingsError as error:  # a value the environment source cannot even parse
        _refuse(f"configuration error: {' '.join(str(error).split())}")
    configure(settings.log_level, settings.log_format)
    for warning in settings.startup_warnings():
        structlog.get_logger().warning(f"configuration: {warning}")
    return settings


def _refuse(message: str) -> NoReturn:
    click.echo(f"herald: cannot start: {message}", err=True)
    sys.exit(2)


def _validation_line(error: ValidationError) -> str:
    """Every problem pydantic found, on one line, by variable name."""
    problems = []
    for item in error.errors():
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        where = "_".join(str(part) for part in item.get("loc", ()) if isinstance(part, str))
        problems.append(f"HERALD_{where.upper()}: {message}" if where else message)
    return "configuration error: " + "; ".join(problems)


def _start(plan: Plan, settings: Settings | None = None) -> None:
    from herald.process import StartupError, run

    settings = settings or _settings()
    try:
        _run(run(settings, plan))
    except (StartupError, ConfigurationError) as error:
        _refuse(" ".join(str(error).split()))


def _plan(**fields: Any) -> Plan:
    from herald.process import Plan

    return Plan(**fields)


host_option = click.option(
    "--host", default=None, help="address to listen on (HERALD_HOST, default 127.0.0.1)"
)
port_option = click.option(
    "--port", default=None, type=int, help="port (HERALD_PORT, default 8080)"
)
metrics_port_option = click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="serve /metrics, /healthz and /readyz of this process on this port "
    "(HERALD_METRICS_PORT; docs/operations.md)",
)
lane_option = click.option(
    "--lane",
    "lanes",
    multiple=True,
    type=click.Choice(["priority", "bulk"]),
    help="consume this lane only (repeatable; default both): run `--lane priority` "
    "processes as a pool of their own for critical and high traffic",
)


def _lanes(lanes: tuple[str, ...]) -> tuple[Lane, ...]:
    from herald.bus.interface import LANES, Lane

    return tuple(Lane(lane) for lane in lanes) if lanes else LANES


@click.group()
@click.version_option(package_name="herald")
def main() -> None:
    """Herald: notifications for applications (push, email, SMS, in-app)."""


@main.command()
@host_option
@port_option
@metrics_port_option
def serve(host: str | None, port: int | None, metrics_port: int | None) -> None:
    """Every role in one process (embedded SQLite + in-process bus unless configured)."""
    settings = _settings()
    _start(
        _plan(
            roles=("api", "relay", "router", "worker", "scheduler"),
            host=host or settings.host,
            port=port or settings.port,
            metrics_port=metrics_port,
        ),
        settings,
    )


@main.command()
@host_option
@port_option
@metrics_port_option
def api(host: str | None, port: int | None, metrics_port: int | None) -> None:
    """The HTTP API alone."""
    settings = _settings()
    _start(
        _plan(
            roles=("api",),
            host=host or settings.host,
            port=port or settings.port,
            migrate=False,
            metrics_port=metrics_port,
        ),
        settings,
    )


@main.command()
@metrics_port_option
def relay(metrics_port: int | None) -> None:
    """The outbox relay alone."""
    _start(_plan(roles=("relay",), migrate=False, metrics_port=metrics_port))


@main.command()
@lane_option
@metrics_port_option
def router(lanes: tuple[str, ...], metrics_port: int | None) -> None:
    """The router alone (broadcast fan-out runs with the bulk lane)."""
    _start(_plan(roles=("router",), lanes=_lanes(lanes), migrate=False, metrics_port=metrics_port))


@main.command()
@click.option(
    "--channel",
    "channels",
    multiple=True,
    required=True,
    type=click.Choice([c.value for c in Channel]),
    help="channel to work on (repeatable)",
)
@lane_option
@metrics_port_option
def worker(channels: tuple[str, ...], lanes: tuple[str, ...], metrics_port: int | None) -> None:
    """A channel worker alone."""
    _start(
        _plan(
            roles=("worker",),
            channels=[Channel(c) for c in channels],
            lanes=_lanes(lanes),
            migrate=False,
            metrics_port=metrics_port,
        )
    )


@main.command()
@metrics_port_option
def scheduler(metrics_port: int | None) -> None:
    """The scheduler alone."""
    _start(_plan(roles=("scheduler",), migrate=False, metrics_port=metrics_port))


@main.command()
def migrate() -> None:
    """Create or upgrade the schema of the configured database."""
    settings = _settings()

    async def upgrade() -> None:
        from herald.storage import open_storage

        storage = open_storage(settings.effective_database_url)
        try:
            await storage.database.migrate()
            await storage.scheduling.maintain()
        finally:
            await storage.database.close()

    from herald.cli_ops import run_command

    run_command("migrate", upgrade)
    click.echo(f"schema up to date: {settings.effective_database_url.split('@')[-1]}")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["admin", "send", "manage", "read"]),
)
@click.option("--name", default=None)
def keys_create(scopes: tuple[str, ...], name: str | None) -> None:
    """Print a new API key once (only its hash is stored)."""
    settings = _settings()

    async def create() -> str:
        from herald.security import generate_key
        from herald.storage import open_storage

        storage = open_storage(settings.effective_database_url)
        try:
            await storage.database.migrate()
            key = generate_key()
            await storage.keys.create_api_key(key.id, key.secret_hash, sorted(set(scopes)), name)
            return key.token
        finally:
            await storage.database.close()

    from herald.cli_ops import run_command

    click.echo(run_command("keys create", create))


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON array on stdout")
def keys_list(as_json: bool) -> None:
    """The API keys: id, name, scopes, created, revoked (never a secret)."""
    from herald import cli_ops

    settings = _settings()
    found = cli_ops.run_command("keys list", lambda: cli_ops.list_keys(settings))
    click.echo(orjson_text(found) if as_json else cli_ops.keys_table(found))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once (its id, as `herald keys list` shows it)."""
    from herald import cli_ops

    settings = _settings()
    cli_ops.run_command("keys revoke", lambda: cli_ops.revoke_key(settings, key_id))
    click.echo(f"revoked {key_id}")


@main.command()
@click.option("--user", "user_id", required=True, help="the user to notify")
@click.option("--title", default="Test notification from herald send", show_default=True)
@click.option("--body", default="", help="the message body")
@click.option("--category", default="default", show_default=True)
@click.option(
    "--channel",
    "channels",
    multiple=True,
    type=click.Choice([c.value for c in Channel]),
    help="only this channel (repeatable; default: the user's channels)",
)
@click.option(
    "--priority", type=click.Choice(["critical", "high", "normal", "low"]), default="normal"
)
@click.option("--url", default=None, help="the API (default HERALD_PUBLIC_URL or host:port)")
@click.option("--key", default=None, help="an API key with the send scope (HERALD_API_KEY)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the notification as JSON")
def send(
    user_id: str,
    title: str,
    body: str,
    category: str,
    channels: tuple[str, ...],
    priority: str,
    url: str | None,
    key: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Send a test notification through the running API and follow its deliveries until
    each is final; exits 1 when one failed, or when time runs out."""
    from herald import cli_ops

    settings = _settings()
    notification = {
        "user_id": user_id,
        "title": title,
        "body": body,
        "category": category,
        "priority": priority,
        **({"channels": list(channels)} if channels else {}),
    }

    async def go() -> dict[str, Any]:
        async with cli_ops.api_client(
            url or settings.effective_public_url, key or settings.api_key
        ) as client:
            return await cli_ops.send_and_follow(client, notification, timeout)

    result = cli_ops.run_command("send", go)
    click.echo(orjson_text(result) if as_json else cli_ops.deliveries_table(result))
    if cli_ops.any_failed(result):
        sys.exit(1)


@main.command()
@click.option(
    "--metrics",
    "scrape",
    multiple=True,
    help="a process's /metrics URL to read circuits and consumer lag from (repeatable)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def status(scrape: tuple[str, ...], as_json: bool) -> None:
    """The backends and whether they answer, the providers, the backlog; with --metrics,
    each process's circuits and consumer lag. Exits 1 when something does not answer."""
    from herald import cli_ops

    settings = _settings()
    with cli_ops.waiting("asking the database, the bus and the processes"):
        report = cli_ops.run_command("status", lambda: cli_ops.collect_status(settings, scrape))
    click.echo(orjson_text(report) if as_json else cli_ops.status_text(report))
    if cli_ops.unhealthy(report):
        sys.exit(1)


@main.command()
@click.option("--notification", "notification_id", default=None)
@click.option("--user", "user_id", default=None)
@click.option("--channel", type=click.Choice([c.value for c in Channel]), default=None)
@click.option("--state", default=None, help="only entries of this state (sent, failed, ...)")
@click.option("--last", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--no-follow", "no_follow", is_flag=True, help="print the last entries and exit")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def tail(
    notification_id: str | None,
    user_id: str | None,
    channel: str | None,
    state: str | None,
    last: int,
    no_follow: bool,
    as_json: bool,
) -> None:
    """Follow the delivery log as it is written (the last --last entries first)."""
    from herald import cli_ops
    from herald.storage.operations import TailFilter

    settings = _settings()
    where = TailFilter(notification_id, user_id, channel, state)
    render = cli_ops.event_json if as_json else cli_ops.event_line

    def emit(event: Any) -> None:
        click.echo(render(event))

    cli_ops.run_command(
        "tail",
        lambda: cli_ops.follow_log(settings, where, emit, last=last, follow=not no_follow),
    )


def orjson_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".herald/fakes"),
    show_default=True,
    help="where the generated credentials and env.sh go",
)
@click.option(
    "--herald-url",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="where the fakes reach Herald (HERALD_PUBLIC_URL: Twilio status callbacks)",
)
@click.option(
    "--email-provider",
    "email_providers",
    multiple=True,
    type=click.Choice(["smtp", "ses", "sendgrid"]),
    help="HERALD_EMAIL_PROVIDERS in failover order (repeatable; default smtp)",
)
def fakes(directory: Path, herald_url: str, email_providers: tuple[str, ...]) -> None:
    """Run every fake provider on loopback and print the exports that point Herald at them."""
    from herald.fakes.runner import run_fleet

    _run(
        run_fleet(
            directory.resolve(), herald_url=herald_url, email_providers=email_providers or ("smtp",)
        )
    )


@main.command()
@click.option(
    "--backend",
    type=click.Choice(["embedded", "production"]),
    default="embedded",
    show_default=True,
    help="embedded: `herald serve` on SQLite; production: one process per role on "
    "PostgreSQL + Kafka (HERALD_DATABASE_URL, HERALD_KAFKA_BOOTSTRAP)",
)
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--notifications", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="push worker processes (production)",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="the FCM fake's answer delay",
)
@click.option("--clients", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1, max=1000), default=200, show_default=True)
@click.option(
    "--sink-processes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="processes of the FCM send fake (SO_REUSEPORT)",
)
@click.option(
    "--baseline-seconds",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="time budget of the naive baseline (and of each --peer)",
)
@click.option("--no-baseline", "no_baseline", is_flag=True, help="skip the naive baseline")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=click.Choice(["firebase-admin"]),
    help="also run this client on the same sink, after Herald (repeatable): firebase-admin "
    "is messaging.send_each_for_multicast (the `bench` extra)",
)
@click.option(
    "--peer-multicast",
    type=click.IntRange(min=1, max=500),
    default=500,
    show_default=True,
    help="device tokens per send_each_for_multicast call",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write a py-spy profile of every Herald process over the measured run into DIR",
)
@click.option(
    "--profile-format",
    type=click.Choice(["flamegraph", "speedscope", "raw"]),
    default="flamegraph",
    show_default=True,
    help="flamegraph: SVG; speedscope: JSON for speedscope; raw: collapsed stacks",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=None,
    help="offer notifications at this steady rate per second (default: as fast as "
    "possible); a paced run skips the naive baseline",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="with --rate: submit for this many seconds (sets --notifications to rate x duration)",
)
@click.option(
    "--rss-interval",
    "rss_interval_s",
    type=click.FloatRange(min=0.25),
    default=5.0,
    show_default=True,
    help="seconds between RSS samples of every Herald process (memory over time)",
)
@click.option(
    "--scenario",
    type=click.Choice(["throughput", "broadcast", "workflow"]),
    default="throughput",
    show_default=True,
    help="broadcast: critical latency while a low-priority broadcast fans out; workflow: "
    "workflow steps/s and timer lag (--notifications runs, --workers schedulers)",
)
@click.option(
    "--pending-timers",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="workflow: timers pending (not yet due) beside the measured runs",
)
@click.option(
    "--subscribers",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="broadcast: the topic's subscribers",
)
@click.option(
    "--trickle-rate",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="broadcast: critical notifications per second",
)
@click.option(
    "--trickle-seconds",
    type=click.FloatRange(min=1),
    default=20.0,
    show_default=True,
    help="broadcast: seconds of the critical trickle alone (the reference latency)",
)
@click.option(
    "--priority-pool",
    is_flag=True,
    help="production: also run a router and a push worker for the priority lane only",
)
@click.option(
    "--sweep",
    is_flag=True,
    help="run at every --sweep-workers x --sweep-notifications, print a markdown table",
)
@click.option("--sweep-workers", default="1,2,4", show_default=True, help="worker counts")
@click.option(
    "--sweep-notifications",
    default="10000,100000,1000000",
    show_default=True,
    help="values of N (1e6 takes about 40 minutes per worker count at 400/s)",
)
@click.option(
    "--herald-src",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="run Herald's processes from this source dir (e.g. `git archive <commit>` + /src): "
    "paired runs of two commits with the same harness",
)
@click.option("--keep", is_flag=True, help="keep the run's files, database and topics")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
@click.option(
    "--idle",
    "idle_seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="measure the CPU of an idle fleet (every role, nothing to send) over this many "
    "seconds instead (herald.bench.idle)",
)
def bench(
    as_json: bool,
    no_baseline: bool,
    idle_seconds: float | None,
    sweep: bool,
    sweep_workers: str,
    sweep_notifications: str,
    **options: Any,
) -> None:
    """The end-to-end benchmark, with the naive baseline beside it."""
    from herald.bench import BenchConfig, BenchError

    pending_timers = options.pop("pending_timers")
    if options["scenario"] == "workflow":
        _bench_workflow(options, pending_timers, as_json)
        return

    config = BenchConfig(baseline=not no_baseline, **options)
    if idle_seconds is not None:
        _bench_idle(config, idle_seconds, as_json)
        return
    holder: list[dict[str, Any]] = []

    async def measure() -> None:
        holder.append(await _bench_run(config, sweep, sweep_workers, sweep_notifications))

    try:
        _run(measure())
    except (BenchError, ValueError) as error:
        click.echo(f"herald bench: {error}", err=True)
        sys.exit(2)
    report = holder[0]
    click.echo(_bench_output(report, as_json))
    if report["lost"] or report["duplicates"]:
        sys.exit(1)


def _bench_workflow(options: dict[str, Any], pending: int, as_json: bool) -> None:
    import orjson

    from herald.bench import BenchError
    from herald.bench.workflows import run_workflow_bench, workflow_table

    holder: list[dict[str, Any]] = []

    async def measure() -> None:
        holder.append(
            await run_workflow_bench(
                options["backend"], options["notifications"], pending, options["workers"]
            )
        )

    try:
        _run(measure())
    except BenchError as error:
        click.echo(f"herald bench: {error}", err=True)
        sys.exit(2)
    report = holder[0]
    click.echo(orjson.dumps(report).decode() if as_json else workflow_table(report))
    if report["lost"] or report["duplicates"]:
        sys.exit(1)


def _bench_idle(config: Any, seconds: float, as_json: bool) -> None:
    import orjson

    from herald.bench import BenchError
    from herald.bench.idle import IdleConfig, idle_table, run_idle

    holder: list[dict[str, Any]] = []

    async def measure() -> None:
        holder.append(await run_idle(config, IdleConfig(seconds=seconds)))

    try:
        _run(measure())
    except BenchError as error:
        click.echo(f"herald bench: {error}", err=True)
        sys.exit(2)
    click.echo(orjson.dumps(holder[0]).decode() if as_json else idle_table(holder[0]))


async def _bench_run(
    config: Any, sweep: bool, sweep_workers: str, sweep_notifications: str
) -> dict[str, Any]:
    from herald.bench import run_bench
    from herald.bench.sweep import parse_counts, run_sweep

    if not sweep:
        return await run_bench(config)
    workers, sizes = parse_counts(sweep_workers), parse_counts(sweep_notifications)
    return await run_sweep(config, workers, sizes)


def _bench_output(report: dict[str, Any], as_json: bool) -> str:
    import orjson

    from herald.bench.broadcast import broadcast_table
    from herald.bench.report import table
    from herald.bench.sweep import markdown

    if as_json:
        return orjson.dumps(report).decode()
    if "sweep" in report:
        return markdown(report)
    if report.get("scenario") == "broadcast":
        return broadcast_table(report)
    return table(report)


@main.command("bench-clients")
@click.option("--requests", type=click.IntRange(min=1, max=20_000), default=5000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1, max=10), default=3, show_default=True)
@click.option(
    "--fcm-concurrency",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="FCM requests in flight (the FCM provider's limit)",
)
@click.option(
    "--apns-concurrency",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="APNs streams in flight (a worker batch)",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="the sink's answer delay",
)
@click.option(
    "--only",
    multiple=True,
    help="a client name (aiohttp, pyreqwest, ...) or key (fcm:pyreqwest:h2); repeatable",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
def bench_clients(
    requests: int,
    repeats: int,
    fcm_concurrency: int,
    apns_concurrency: int,
    latency_ms: float,
    only: tuple[str, ...],
    as_json: bool,
) -> None:
    """Client CPU per FCM and APNs request of every installed HTTP client candidate,
    against the benchmark sink (each candidate in its own process, rounds interleaved)."""
    import orjson

    from herald.bench.clients import ClientsConfig, markdown, run_clients

    config = ClientsConfig(
        requests=requests,
        repeats=repeats,
        fcm_concurrency=fcm_concurrency,
        apns_concurrency=apns_concurrency,
        latency_ms=latency_ms,
        only=only,
    )
    report = run_clients(config, lambda line: click.echo(line, err=True))
    click.echo(orjson.dumps(report).decode() if as_json else markdown(report))


@main.command()
@click.option("--duration", default=60.0, show_default=True, help="seconds of traffic (and faults)")
@click.option("--rate", default=25.0, show_default=True, help="notifications per second")
@click.option("--users", default=120, show_default=True, help="users (1-3 devices each)")
@click.option("--seed", default=None, type=int, help="random seed (faults, traffic)")
@click.option("--soak", is_flag=True, help="no faults: memory, consumer lag, outbox over time")
@click.option("--lease", "lease_seconds", default=3.0, show_default=True, help="lease seconds")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="logs and broker data (default: a new temporary directory)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (docs/api.md)")
def chaos(
    duration: float,
    rate: float,
    users: int,
    seed: int | None,
    soak: bool,
    lease_seconds: float,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Run a fleet on a private PostgreSQL and Kafka with the provider fakes, break it at
    random (SIGKILLs, broker and database restarts, provider 503/429/slowness), drain, and
    count what each fake received: lost, duplicates, unknown. Exits 1 when a delivery
    guarantee does not hold. Needs root (pg_ctlcluster) and a checkout (scripts/services.sh)."""
    from herald.chaos import ChaosOptions, run_chaos

    options = ChaosOptions(
        duration=duration,
        rate=rate,
        users=users,
        seed=seed,
        soak=soak,
        faults=not soak,
        lease_seconds=lease_seconds,
        workdir=workdir.resolve() if workdir else None,
        sample_every=max(2.0, duration / 12),
    )
    holder: list[bool] = []

    async def go() -> None:
        holder.append(await run_chaos(options, as_json=as_json))

    _run(go())
    sys.exit(0 if holder and holder[0] else 1)


main.add_command(dlq_group(_settings, _run), "dlq")

if __name__ == "__main__":  # pragma: no cover
    main()
