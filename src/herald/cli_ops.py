"""The operator's commands: `herald keys list|revoke`, `herald send`, `herald status`,
`herald tail`. Each prints its result on stdout, shows a spinner on stderr while it waits
(on a terminal), and ends with one line on stderr and a non-zero exit code when something
is wrong, never a traceback."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from datetime import UTC
from typing import Any, NoReturn, TypeVar

import click
import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from herald.config import Settings
from herald.domain import Channel
from herald.domain.deliveries import UNSENT_STATES, DeliveryState
from herald.roles import describe_error
from herald.storage import Storage, open_storage
from herald.storage.operations import LoggedEvent, TailFilter

T = TypeVar("T")
FAILED_STATES = {DeliveryState.FAILED, DeliveryState.UNDELIVERABLE, DeliveryState.UNKNOWN}
STILL_WAITING = {state.value for state in UNSENT_STATES}


class CommandError(Exception):
    """What went wrong, in one line for the operator."""


def fail(command: str, message: str, code: int = 1) -> NoReturn:
    click.echo(f"herald {command}: {message}", err=True)
    sys.exit(code)


def run_command(command: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`; any error becomes one line on stderr (Ctrl-C too)."""
    try:
        return asyncio.run(_call(work))
    except CommandError as error:
        fail(command, str(error))
    except KeyboardInterrupt:
        fail(command, "interrupted", 130)
    except Exception as error:
        fail(command, describe_error(error))


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


@contextmanager
def waiting(message: str) -> Any:
    """A spinner on stderr while the block waits (nothing when stderr is not a terminal)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with console.status(message) as status:
        yield status


@asynccontextmanager
async def storage_of(settings: Settings) -> AsyncIterator[Storage]:
    storage = open_storage(settings.effective_database_url)
    where = storage.database.describe()
    try:
        if not await storage.database.ping():
            raise CommandError(f"database unreachable at {where}")
        yield storage
    finally:
        await storage.database.close()


# -- keys --------------------------------------------------------------------------------


async def list_keys(settings: Settings) -> list[dict[str, Any]]:
    async with storage_of(settings) as storage:
        keys = await storage.keys.list_api_keys()
    return [
        {
            "id": key.id,
            "name": key.name,
            "scopes": list(key.scopes),
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key in keys
    ]


def keys_table(keys: Sequence[dict[str, Any]]) -> str:
    rows = [("ID", "NAME", "SCOPES", "CREATED", "REVOKED")]
    rows += [
        (
            k["id"],
            k["name"] or "-",
            ",".join(k["scopes"]),
            k["created_at"][:19],
            (k["revoked_at"] or "-")[:19],
        )
        for k in keys
    ]
    return table(rows)


async def revoke_key(settings: Settings, key_id: str) -> None:
    async with storage_of(settings) as storage:
        if not await storage.keys.revoke_api_key(key_id):
            known = await storage.keys.get_api_key(key_id)
            raise CommandError(
                f"key {key_id} is already revoked" if known else f"no key with id {key_id}"
            )


# -- send --------------------------------------------------------------------------------


def api_client(url: str, key: str | None) -> httpx.AsyncClient:
    if not key:
        raise CommandError("no API key: set HERALD_API_KEY or pass --key")
    return httpx.AsyncClient(
        base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def api_error(response: httpx.Response) -> CommandError:
    try:
        error = response.json()["error"]
        return CommandError(f"{response.status_code} {error['code']}: {error['message']}")
    except (ValueError, KeyError, TypeError):
        return CommandError(f"{response.status_code}: {response.text[:200]}")


async def send_and_follow(
    client: httpx.AsyncClient, notification: dict[str, Any], timeout: float, poll: float = 0.25
) -> dict[str, Any]:
    """POST the notification, then read it until every delivery is final (or `timeout`)."""
    try:
        accepted = await client.post(
            "/v1/notifications",
            json=notification,
            headers={"Idempotency-Key": f"herald-send-{uuid.uuid4()}"},
        )
    except httpx.HTTPError as error:
        raise CommandError(f"cannot reach the API at {client.base_url}: {error}") from None
    if accepted.status_code not in (200, 202):
        raise api_error(accepted)
    notification_id = accepted.json()["id"]
    click.echo(f"accepted {notification_id}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with waiting("waiting for the deliveries") as status:
        while True:
            response = await client.get(f"/v1/notifications/{notification_id}")
            if response.status_code != 200:
                raise api_error(response)
            body: dict[str, Any] = response.json()
            pending = [d for d in body["deliveries"] if d["status"] in STILL_WAITING]
            if body["status"] != "accepted" and not pending:
                return body
            if status is not None:
                done = len(body["deliveries"]) - len(pending)
                status.update(f"waiting: {done} of {len(body['deliveries'])} deliveries final")
            if loop.time() > deadline:
                states = ", ".join(f"{d['channel']} {d['status']}" for d in pending) or "routing"
                raise CommandError(f"still waiting after {timeout:g}s: {states}")
            await asyncio.sleep(poll)


def deliveries_table(body: dict[str, Any]) -> str:
    rows = [("CHANNEL", "PROVIDER", "STATUS", "TARGET", "ATTEMPTS", "ERROR")]
    rows += [
        (
            d["channel"],
            d["provider"] or "-",
            d["status"],
            d["target"] or "-",
            str(d["attempts"]),
            d["last_error"] or "",
        )
        for d in body["deliveries"]
    ]
    if len(rows) == 1:
        return f"no deliveries (notification {body['status']})"
    return table(rows)


def any_failed(body: dict[str, Any]) -> bool:
    return body["status"] == "failed" or any(
        d["status"] in FAILED_STATES for d in body["deliveries"]
    )


# -- status ------------------------------------------------------------------------------


async def collect_status(settings: Settings, scrape: Sequence[str]) -> dict[str, Any]:
    from herald.runtime import make_bus

    report: dict[str, Any] = {}
    storage = open_storage(settings.effective_database_url)
    try:
        reachable = await storage.database.ping()
        report["database"] = {"url": storage.database.describe(), "ok": reachable}
        if reachable:
            backlog = await storage.operations.backlog()
            report["backlog"] = {
                "outbox": backlog.outbox_depth,
                "outbox_oldest_age_s": round(backlog.outbox_oldest_age_seconds, 1),
                **{
                    state.value: {
                        "count": waiting.count,
                        "oldest_age_s": round(waiting.oldest_age_seconds, 1),
                    }
                    for state, waiting in backlog.deliveries.items()
                },
                "scheduler_lag_s": round(backlog.scheduler_lag_seconds, 1),
            }
        report["providers"] = providers_of(settings, storage)
    finally:
        await storage.database.close()
    report["bus"] = await bus_status(make_bus(settings))
    report["processes"] = [await scrape_process(url) for url in scrape]
    return report


def providers_of(settings: Settings, storage: Storage) -> dict[str, str]:
    from herald.live import LocalHub
    from herald.providers.registry import build_providers

    return build_providers(settings, storage, LocalHub()).describe()


async def bus_status(bus: Any) -> dict[str, Any]:
    from herald.bus.memory import MemoryBus

    if isinstance(bus, MemoryBus):
        return {"bus": bus.describe(), "ok": None, "note": "in-process: see herald serve"}
    try:
        await asyncio.wait_for(bus.start(), 15)
        return {"bus": bus.describe(), "ok": await bus.healthy()}
    except Exception as error:
        return {"bus": bus.describe(), "ok": False, "error": describe_error(error)}
    finally:
        await bus.close()


async def scrape_process(url: str) -> dict[str, Any]:
    """Circuits and consumer lag, from one process's /metrics."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as error:
        return {"url": url, "ok": False, "error": describe_error(error)}
    circuits: dict[str, str] = {}
    lag: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "herald_provider_circuit_open":
                circuits[sample.labels["provider"]] = "open" if sample.value else "closed"
            elif sample.name == "herald_consumer_lag":
                slot = f"{sample.labels['group']} {sample.labels['topic']}"
                lag[slot] = lag.get(slot, 0) + sample.value
    return {"url": url, "ok": True, "circuits": circuits, "consumer_lag": lag}


def status_text(report: dict[str, Any]) -> str:
    def mark(ok: bool | None) -> str:
        return {True: "ok", False: "UNREACHABLE", None: "-"}[ok]

    bus = report["bus"]
    remark = bus.get("error") or bus.get("note")
    lines = [
        f"database  {mark(report['database']['ok'])}  {report['database']['url']}",
        f"bus       {mark(bus['ok'])}  {bus['bus']}" + (f"  ({remark})" if remark else ""),
        "providers",
        *(f"  {channel:<7} {what}" for channel, what in sorted(report["providers"].items())),
    ]
    if "backlog" in report:
        b = report["backlog"]
        lines.append(
            f"backlog   outbox {b['outbox']} (oldest {b['outbox_oldest_age_s']}s)"
            f"  scheduler lag {b['scheduler_lag_s']}s"
        )
        lines += [
            f"  {state:<8} {b[state]['count']} (oldest {b[state]['oldest_age_s']}s)"
            for state in ("queued", "deferred", "sending")
        ]
    for process in report["processes"]:
        if not process["ok"]:
            lines.append(f"process   UNREACHABLE  {process['url']}: {process['error']}")
            continue
        lines.append(f"process   ok  {process['url']}")
        lines += [f"  circuit {p}: {state}" for p, state in sorted(process["circuits"].items())]
        lines += [f"  lag {slot}: {int(v)}" for slot, v in sorted(process["consumer_lag"].items())]
    return "\n".join(lines)


def unhealthy(report: dict[str, Any]) -> bool:
    return (
        report["database"]["ok"] is False
        or report["bus"]["ok"] is False
        or any(not p["ok"] for p in report["processes"])
    )


# -- tail --------------------------------------------------------------------------------


async def follow_log(
    settings: Settings,
    where: TailFilter,
    emit: Callable[[LoggedEvent], None],
    *,
    last: int,
    follow: bool,
    poll: float = 1.0,
) -> None:
    async with storage_of(settings) as storage:
        events, position = await storage.operations.log_after(None, where, limit=max(last, 1))
        for event in events[-last:] if last else []:
            emit(event)
        while follow:
            await asyncio.sleep(poll)
            events, position = await storage.operations.log_after(position, where)
            for event in events:
                emit(event)


def event_line(event: LoggedEvent) -> str:
    at = event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    detail = event.detail.get("error") or event.detail.get("reason") or ""
    return (
        f"{at}  {event.state:<13} {event.channel:<6} {event.provider or '-':<9} "
        f"notification={event.notification_id} delivery={event.delivery_id} "
        f"user={event.user_id}" + (f"  {detail}" if detail else "")
    )


def event_json(event: LoggedEvent) -> str:
    return orjson.dumps(asdict(event), default=str).decode()


# -- shared ------------------------------------------------------------------------------


def table(rows: Iterable[Sequence[str]]) -> str:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


CHANNELS = [channel.value for channel in Channel]
STATES = [state.value for state in DeliveryState]
