"""What every long-running role shares: a loop that consumes the bus in batches, hands each
batch to the role, commits after the work is recorded, and stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from herald.bus.interface import Bus, BusUnavailable, Message

log = structlog.get_logger()

Handler = Callable[[Sequence[Message]], Awaitable[None]]
# Batches on the priority lane stay small, so an urgent message never waits behind many.
PRIORITY_BATCH_SIZE = 50


async def consume_loop(
    bus: Bus,
    topics: Sequence[str],
    group: str,
    handle: Handler,
    stop: asyncio.Event,
    *,
    batch_size: int = 500,
    name: str,
) -> None:
    """Poll, handle, commit, until `stop` is set. A failed batch is not committed: the
    consumer is recreated, so the batch is handed out again (at-least-once)."""
    while not stop.is_set():
        consumer = bus.consumer(topics, group)
        try:
            while not stop.is_set():
                messages = await consumer.poll(batch_size, timeout=0.5)
                if not messages:
                    continue
                await handle(messages)
                await consumer.commit(messages)
        except BusUnavailable as error:
            log.warning("bus unavailable, pausing", role=name, error=str(error))
            await wait_for_event(stop, 2.0)
        except Exception:
            log.exception("batch failed; it will be handed out again", role=name)
            await wait_for_event(stop, 1.0)
        finally:
            await consumer.close()


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
