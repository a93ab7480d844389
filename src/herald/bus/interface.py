"""The message bus contract: the in-process bus and Kafka both implement it.

Topics hold keyed messages; a key (the user id) always maps to the same partition, so one
user's messages keep their order. Consumers join a group; the group's partitions are shared
among its live members and rebalanced when one joins or leaves. Consumption is
at-least-once: a consumer commits after it has recorded its work, and whatever was handed
out but not committed is handed out again (to the same group) after a restart or rebalance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from herald.domain.channels import Channel, Priority

NOTIFICATIONS_TOPIC = "herald.notifications"
# One message per page of a broadcast's audience: {"broadcast_id", "after": last user id}.
BROADCASTS_TOPIC = "herald.broadcasts"


class Lane(StrEnum):
    """critical and high travel on their own topics and consumers, so a flood of bulk
    messages (a broadcast) never queues in front of a one-time password."""

    PRIORITY = "priority"
    BULK = "bulk"


LANES: tuple[Lane, ...] = (Lane.PRIORITY, Lane.BULK)


def lane_for(priority: Priority | str) -> Lane:
    return Lane.PRIORITY if priority in (Priority.CRITICAL, Priority.HIGH) else Lane.BULK


def _laned(base: str, lane: Lane) -> str:
    return f"{base}.priority" if lane == Lane.PRIORITY else base


def notifications_topic(lane: Lane = Lane.BULK) -> str:
    return _laned(NOTIFICATIONS_TOPIC, lane)


def deliveries_topic(channel: Channel | str, lane: Lane = Lane.BULK) -> str:
    return _laned(f"herald.deliveries.{channel}", lane)


# Deliveries whose retries ran out, for operators to inspect or replay (the delivery itself
# is `failed` with its last error).
DEAD_LETTER_TOPIC = "herald.deliveries.deadletter"

ALL_TOPICS: tuple[str, ...] = (
    *(notifications_topic(lane) for lane in LANES),
    BROADCASTS_TOPIC,
    *(deliveries_topic(c, lane) for c in Channel for lane in LANES),
    DEAD_LETTER_TOPIC,
)


@dataclass(frozen=True, slots=True)
class Record:
    """A message to publish."""

    topic: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A message as consumed, with where it came from (for commits)."""

    topic: str
    key: str
    value: bytes
    partition: int
    offset: int


class BusUnavailable(RuntimeError):
    """The bus cannot be reached (broker down); the caller should pause and retry."""


class Consumer(Protocol):
    async def poll(self, max_messages: int = 500, timeout: float = 1.0) -> list[Message]:
        """Up to max_messages, waiting at most `timeout` seconds for the first one; with
        `timeout` 0, only what is ready, at once."""
        ...

    async def commit(self, messages: Sequence[Message]) -> None:
        """Mark these (and everything before them in their partitions) as done."""
        ...

    async def close(self) -> None:
        """Leave the group; uncommitted messages go to the remaining members."""
        ...

    def lag(self) -> dict[str, int]:
        """Per topic, the messages of the partitions this member holds that it has not
        consumed yet, as of its last poll (no request to the broker)."""
        ...


class Bus(Protocol):
    async def start(self) -> None:
        """Connect and create the topics when missing. Raises BusUnavailable."""
        ...

    async def publish(self, records: Sequence[Record]) -> None:
        """Returns once every record is durably stored (acks=all on Kafka)."""
        ...

    def consumer(self, topics: Sequence[str], group: str) -> Consumer:
        """A new member of `group` reading `topics`."""
        ...

    async def healthy(self) -> bool: ...

    def held_in_memory(self) -> int:
        """Messages published and not yet consumed that this process holds in memory (the
        in-process bus); 0 where a broker holds them. The relay waits while it is high, so
        a backlog stays in the outbox on disk instead of growing the process."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for the startup banner."""
        ...
