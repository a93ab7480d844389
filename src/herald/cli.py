"""The `herald` command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import click

from herald.config import Settings
from herald.domain import Channel
from herald.logs import configure
from herald.process import Plan, StartupError, run


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(coroutine)


def _settings() -> Settings:
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    return settings


def _start(plan: Plan) -> None:
    settings = _settings()
    try:
        _run(run(settings, plan))
    except StartupError as error:
        click.echo(f"herald: cannot start: {error}", err=True)
        sys.exit(2)


host_option = click.option(
    "--host", default=None, help="address to listen on (HERALD_HOST, default 127.0.0.1)"
)
port_option = click.option(
    "--port", default=None, type=int, help="port (HERALD_PORT, default 8080)"
)


@click.group()
@click.version_option(package_name="herald")
def main() -> None:
    """Herald: notifications for applications (push, email, SMS, in-app)."""


@main.command()
@host_option
@port_option
def serve(host: str | None, port: int | None) -> None:
    """Every role in one process (embedded SQLite + in-process bus unless configured)."""
    settings = Settings()
    _start(
        Plan(
            roles=("api", "relay", "router", "worker", "scheduler"),
            host=host or settings.host,
            port=port or settings.port,
        )
    )


@main.command()
@host_option
@port_option
def api(host: str | None, port: int | None) -> None:
    """The HTTP API alone."""
    settings = Settings()
    _start(
        Plan(roles=("api",), host=host or settings.host, port=port or settings.port, migrate=False)
    )


@main.command()
def relay() -> None:
    """The outbox relay alone."""
    _start(Plan(roles=("relay",), migrate=False))


@main.command()
def router() -> None:
    """The router alone."""
    _start(Plan(roles=("router",), migrate=False))


@main.command()
@click.option(
    "--channel",
    "channels",
    multiple=True,
    required=True,
    type=click.Choice([c.value for c in Channel]),
    help="channel to work on (repeatable)",
)
def worker(channels: tuple[str, ...]) -> None:
    """A channel worker alone."""
    _start(Plan(roles=("worker",), channels=[Channel(c) for c in channels], migrate=False))


@main.command()
def scheduler() -> None:
    """The scheduler alone."""
    _start(Plan(roles=("scheduler",), migrate=False))


@main.command()
def migrate() -> None:
    """Create or upgrade the schema of the configured database."""
    settings = _settings()

    async def upgrade() -> None:
        from herald.storage import open_store

        store = open_store(settings.effective_database_url)
        try:
            await store.migrate()
            await store.maintain()
        finally:
            await store.close()

    _run(upgrade())
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
        from herald.storage import open_store

        store = open_store(settings.effective_database_url)
        try:
            await store.migrate()
            key = generate_key()
            await store.create_api_key(key.id, key.secret_hash, sorted(set(scopes)), name)
            return key.token
        finally:
            await store.close()

    holder: list[str] = []

    async def keep() -> None:
        holder.append(await create())

    _run(keep())
    click.echo(holder[0])


if __name__ == "__main__":  # pragma: no cover
    main()
