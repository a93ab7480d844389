"""`herald dlq list|replay`: the dead-letter queue from the shell, read and replayed on the
configured database (the relay of a running Herald then sends what was replayed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from herald.config import Settings
from herald.domain import mask_target

if TYPE_CHECKING:
    from herald.storage import Storage

REPLAY_REASON = "replayed from the dead-letter queue (herald dlq replay)"
T = TypeVar("T")


async def _with_storage(settings: Settings, work: Callable[[Storage], Awaitable[T]]) -> T:
    from herald.storage import open_storage

    storage = open_storage(settings.effective_database_url)
    try:
        return await work(storage)
    finally:
        await storage.database.close()


def dlq_group(
    settings: Callable[[], Settings], run: Callable[[Coroutine[Any, Any, None]], None]
) -> click.Group:
    @click.group()
    def dlq() -> None:
        """The dead-letter queue: deliveries that failed for good."""

    @dlq.command("list")
    @click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
    def dlq_list(limit: int) -> None:
        """One line per dead letter, most recent first: when, delivery, channel, target, why."""

        async def show(storage: Storage) -> None:
            page = await storage.activity.dead_letters(limit, None)
            if not page.items:
                click.echo("the dead-letter queue is empty")
            for d in page.items:
                when = d.updated_at.isoformat(timespec="seconds") if d.updated_at else "-"
                target = mask_target(d.channel, d.target)
                click.echo(f"{when}  {d.id}  {d.channel.value:<6}  {target}  {d.last_error or ''}")
            if page.next_cursor:
                click.echo(f"(more: raise --limit above {limit})")

        config = settings()
        run(_with_storage(config, show))

    @dlq.command("replay")
    @click.argument("delivery_ids", nargs=-1)
    @click.option("--all", "replay_all", is_flag=True, help="every dead letter (up to 1,000)")
    def dlq_replay(delivery_ids: tuple[str, ...], replay_all: bool) -> None:
        """Queue dead letters again (by delivery id, or --all). Replaying twice sends once."""
        if not delivery_ids and not replay_all:
            raise click.UsageError("name delivery ids, or give --all")

        async def replay(storage: Storage) -> None:
            ids = list(delivery_ids) or await storage.activity.failed_ids(1000)
            results = await storage.activity.replay(ids, REPLAY_REASON)
            found = {r.delivery_id for r in results}
            for r in results:
                verdict = "replayed" if r.replayed else f"not replayed (it is {r.state})"
                click.echo(f"{r.delivery_id}  {verdict}")
            for missing in (i for i in ids if i not in found):
                click.echo(f"{missing}  no such delivery", err=True)
            click.echo(f"{sum(r.replayed for r in results)} replayed")

        config = settings()
        run(_with_storage(config, replay))

    return dlq
