"""What every long-running role shares: a loop that consumes the bus in batches, hands each
batch to the role, commits after the work is recorded, and stops cleanly.

Two kinds of failure are told apart. An outage (the bus or the database unreachable, a
deadlock, a connection lost) is nobody's message's fault: the batch is not committed, the
loop pauses with a capped exponential backoff and tries again, as long as it takes. Any
other error belongs to a message: the batch is handled again in halves until the message
that fails on its own is found; the others are processed, and that one is set aside (the
role records why, e.g. the notification is marked failed in its delivery log; the message
goes to the dead-letter topic with the error) so it can never hold its batch back."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from herald.bus.interface import Bus, Consumer, Message
from herald.bus.messages import named_ids, set_aside_record
from herald.metrics import METRICS
from herald.outages import is_outage

log = structlog.get_logger()

Handler = Callable[[Sequence[Message]], Awaitable[None]]
# Records, for the role, why a message is set aside (its delivery log); gets the reason.
SetAside = Callable[[Message, str], Awaitable[None]]
# Batches on the priority lane stay small, so an urgent message never waits behind many.
PRIORITY_BATCH_SIZE = 50
# How long one poll waits for a first message. A poll returns as soon as one arrives, and a
# stop ends it at once, so this only sets how often an idle consumer loop wakes.
POLL_SECONDS = 5.0


@dataclass
class Backoff:
    """Capped exponential backoff with ±20 % jitter: 0.5 s, 1 s, 2 s ... up to `cap`."""

    initial: float = 0.5
    cap: float = 30.0
    rng: random.Random | None = None
    _failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.initial * 2.0 ** min(self._failures, 32))
        self._failures += 1
        jitter = self.rng.random() if self.rng else random.random()
        return delay * (0.8 + 0.4 * jitter)

    def reset(self) -> None:
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures


def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


async def consume_loop(
    bus: Bus,
    topics: Sequence[str],
    group: str,
    handle: Handler,
    stop: asyncio.Event,
    *,
    batch_size: int = 500,
    name: str,
    set_aside: SetAside | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Poll, handle, commit, until `stop` is set. A batch that failed because of an outage
    is not committed: the consumer is recreated after a backoff, so the batch is handed out
    again (at-least-once). A batch that failed because of a message is split until that
    message is isolated and set aside (see the module's docstring)."""
    backoff = backoff or Backoff(initial=0.5, cap=5.0)  # resume within seconds of a recovery
    while not stop.is_set():
        consumer = bus.consumer(topics, group)
        reported: dict[str, int] = {}
        try:
            while not stop.is_set():
                messages = await _poll(consumer, batch_size, stop)
                reported = _report_lag(consumer, group, reported)
                if not messages:
                    continue
                await _handle_isolating(bus, group, name, handle, messages, set_aside)
                await consumer.commit(messages)
                if backoff.failures:
                    log.info("resumed", role=name, after_failures=backoff.failures)
                backoff.reset()
        except Exception as error:
            delay = backoff.next_delay()
            if is_outage(error):
                log.warning(
                    "bus or database unavailable, pausing",
                    role=name,
                    error=describe_error(error),
                    retry_in_s=round(delay, 2),
                )
            else:  # the set-aside itself failed: nothing was committed
                log.exception(
                    "batch failed; it will be handed out again",
                    role=name,
                    retry_in_s=round(delay, 2),
                )
            await wait_for_event(stop, delay)
        finally:
            try:
                await consumer.close()
            except Exception as error:  # the bus may be down: the broker forgets us anyway
                log.warning("closing the consumer failed", role=name, error=describe_error(error))


def _report_lag(consumer: Consumer, group: str, reported: dict[str, int]) -> dict[str, int]:
    """Set the lag gauges when the consumer's figures changed since `reported`; returns
    what the gauges now hold (a gauge's labels() lookup per batch shows at light load)."""
    lag = consumer.lag()
    if lag != reported:
        for topic, behind in lag.items():
            METRICS.consumer_lag.labels(topic, group).set(behind)
    return lag


async def _poll(consumer: Consumer, batch_size: int, stop: asyncio.Event) -> list[Message]:
    """The next batch, or nothing once `stop` is set: the poll is then given up (what it
    may have fetched is not committed, so the group hands it out again)."""
    # While messages flow, what is ready is taken at once, without the two tasks and the
    # wait that racing a long poll against `stop` costs.
    ready = await consumer.poll(batch_size, timeout=0)
    if ready or stop.is_set():
        return ready
    poll = asyncio.ensure_future(consumer.poll(batch_size, timeout=POLL_SECONDS))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((poll, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not poll.done():
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
    return [] if poll.cancelled() else poll.result()


async def _handle_isolating(
    bus: Bus,
    group: str,
    name: str,
    handle: Handler,
    messages: Sequence[Message],
    set_aside: SetAside | None,
) -> None:
    """Handle `messages`; when that raises (not an outage), handle each half on its own,
    down to the single message that fails alone, which is set aside."""
    try:
        await handle(messages)
        return
    except Exception as error:
        if is_outage(error):
            raise
        if len(messages) == 1:
            await _set_aside(bus, group, name, messages[0], error, set_aside)
            return
        log.warning(
            "batch failed; handling it in halves to find the message",
            role=name,
            count=len(messages),
            error=describe_error(error),
        )
    half = len(messages) // 2
    await _handle_isolating(bus, group, name, handle, messages[:half], set_aside)
    await _handle_isolating(bus, group, name, handle, messages[half:], set_aside)


async def _set_aside(
    bus: Bus,
    group: str,
    name: str,
    message: Message,
    error: Exception,
    set_aside: SetAside | None,
) -> None:
    reason = describe_error(error)
    log.error(
        "message set aside: it cannot be processed",
        role=name,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        ids=named_ids(message),
        error=reason,
        exc_info=error,
    )
    if set_aside is not None:
        try:
            await set_aside(message, reason)
        except Exception as failure:
            if is_outage(failure):
                raise  # try the batch again later: nothing is committed
            log.exception("recording a set-aside message failed", role=name, key=message.key)
    await bus.publish([set_aside_record(message, group, reason)])


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
