"""The in-process bus: Kafka's semantics (keyed partitions, consumer groups, commit after
handling, redelivery of what was not committed) inside one process, for the embedded default.

Messages live in memory. What a crash would lose is recovered from the database: the
scheduler's sweep republishes notifications not yet routed and deliveries left queued.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from herald.bus.interface import Message, Record


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


@dataclass
class _Partition:
    base_offset: int = 0
    messages: deque[Message] = field(default_factory=deque)

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.messages)

    def read(self, offset: int, limit: int) -> list[Message]:
        start = max(offset, self.base_offset) - self.base_offset
        return list(itertools.islice(self.messages, start, start + limit))

    def truncate_before(self, offset: int) -> None:
        while self.messages and self.base_offset < offset:
            self.messages.popleft()
            self.base_offset += 1


@dataclass
class _Group:
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    members: list[MemoryConsumer] = field(default_factory=list)


class MemoryBus:
    def __init__(self, partitions: int = 12) -> None:
        self.partitions = partitions
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._wakeup = asyncio.Condition()

    async def start(self) -> None:
        return None

    def held_in_memory(self) -> int:
        return sum(len(p.messages) for parts in self._topics.values() for p in parts)

    def _topic(self, name: str) -> list[_Partition]:
        if name not in self._topics:
            self._topics[name] = [_Partition() for _ in range(self.partitions)]
        return self._topics[name]

    async def publish(self, records: Sequence[Record]) -> None:
        for record in records:
            partitions = self._topic(record.topic)
            number = partition_for(record.key, self.partitions)
            partition = partitions[number]
            partition.messages.append(
                Message(record.topic, record.key, record.value, number, partition.end_offset)
            )
        async with self._wakeup:
            self._wakeup.notify_all()

    def consumer(self, topics: Sequence[str], group: str) -> MemoryConsumer:
        member = MemoryConsumer(self, tuple(topics), group)
        state = self._groups.setdefault(group, _Group())
        state.members.append(member)
        self._rebalance(group)
        return member

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        for group in self._groups.values():
            group.members.clear()
        async with self._wakeup:
            self._wakeup.notify_all()

    def describe(self) -> str:
        return f"in-process bus ({self.partitions} partitions)"

    def backlog(self, topic: str, group: str) -> int:
        """Messages of `topic` not yet committed by `group` (consumer lag)."""
        committed = self._groups.get(group, _Group()).committed
        return sum(
            partition.end_offset - committed.get((topic, number), 0)
            for number, partition in enumerate(self._topic(topic))
        )

    # -- group coordination -------------------------------------------------------------

    def _rebalance(self, group: str) -> None:
        """Round-robin the group's partitions over its members; positions restart at the
        committed offsets, so whatever was handed out uncommitted is handed out again."""
        state = self._groups[group]
        for member in state.members:
            member.assignment.clear()
        if not state.members:
            return
        topics = sorted({t for member in state.members for t in member.topics})
        slots = [(t, p) for t in topics for p in range(self.partitions)]
        eligible = itertools.cycle(state.members)
        for slot in slots:
            for _ in range(len(state.members)):
                member = next(eligible)
                if slot[0] in member.topics:
                    member.assignment[slot] = state.committed.get(slot, 0)
                    break

    def _leave(self, member: MemoryConsumer) -> None:
        state = self._groups[member.group]
        if member in state.members:
            state.members.remove(member)
            self._rebalance(member.group)

    def _commit(self, group: str, positions: dict[tuple[str, int], int]) -> None:
        committed = self._groups[group].committed
        for slot, offset in positions.items():
            committed[slot] = max(committed.get(slot, 0), offset)
        for topic, number in positions:
            self._truncate(topic, number)

    def _truncate(self, topic: str, number: int) -> None:
        """Drop what every group reading this topic has committed."""
        readers = [
            state.committed.get((topic, number), 0)
            for state in self._groups.values()
            if any(topic in member.topics for member in state.members)
            or (topic, number) in state.committed
        ]
        if readers:
            self._topic(topic)[number].truncate_before(min(readers))


class MemoryConsumer:
    def __init__(self, bus: MemoryBus, topics: tuple[str, ...], group: str) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self.assignment: dict[tuple[str, int], int] = {}
        self.closed = False

    def _take(self, max_messages: int) -> list[Message]:
        taken: list[Message] = []
        for slot, position in self.assignment.items():
            if len(taken) >= max_messages:
                break
            topic, number = slot
            batch = self.bus._topic(topic)[number].read(position, max_messages - len(taken))
            if batch:
                self.assignment[slot] = batch[-1].offset + 1
                taken.extend(batch)
        return taken

    async def poll(self, max_messages: int = 500, timeout: float = 1.0) -> list[Message]:
        if self.closed:
            return []
        taken = self._take(max_messages)
        if taken or timeout <= 0:
            return taken
        try:
            async with self.bus._wakeup:
                await asyncio.wait_for(self.bus._wakeup.wait(), timeout)
        except TimeoutError:
            return []
        return [] if self.closed else self._take(max_messages)

    async def commit(self, messages: Sequence[Message]) -> None:
        positions: dict[tuple[str, int], int] = {}
        for message in messages:
            slot = (message.topic, message.partition)
            positions[slot] = max(positions.get(slot, 0), message.offset + 1)
        self.bus._commit(self.group, positions)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._leave(self)

    def lag(self) -> dict[str, int]:
        behind = dict.fromkeys(self.topics, 0)
        for (topic, number), position in self.assignment.items():
            behind[topic] += max(0, self.bus._topic(topic)[number].end_offset - position)
        return behind
