"""The Bus contract (herald.bus.interface), run against every implementation."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from herald.bus.interface import Bus, Message, Record
from herald.bus.memory import MemoryBus
from tests.fixtures.bus import (
    PARTITIONS,
    TOPIC,
    WAIT,
    assert_nothing_more,
    collect,
    records,
    settle,
    values,
)


@pytest.fixture
def memory_bus() -> MemoryBus:
    return MemoryBus(partitions=PARTITIONS)


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest) -> Bus:
    bus: Bus = request.getfixturevalue(f"{request.param}_bus")
    return bus


@pytest.mark.parametrize("topic", [TOPIC, "herald.test.extra"])
async def test_publish_then_poll_round_trip(bus: Bus, topic: str) -> None:
    sent = [Record(topic, "user-1", b"one"), Record(topic, "user-2", b"\x00two\xff")]
    await bus.publish(sent)
    consumer = bus.consumer([topic], "router")
    got = await collect(consumer, len(sent))
    await consumer.close()

    assert sorted((m.topic, m.key, m.value) for m in got) == sorted(
        (r.topic, r.key, r.value) for r in sent
    )
    for message in got:
        assert 0 <= message.partition < PARTITIONS
        assert message.offset >= 0


async def test_one_key_keeps_its_order_and_partition(bus: Bus) -> None:
    keys = [f"user-{k}" for k in range(5)]
    for batch in range(4):
        await bus.publish(
            [
                Record(TOPIC, key, f"{key}:{batch * 25 + i}".encode())
                for i in range(25)
                for key in keys
            ]
        )
    consumer = bus.consumer([TOPIC], "router")
    got = await collect(consumer, 4 * 25 * len(keys))
    await consumer.close()

    sequences: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for message in got:
        key, number = message.value.decode().split(":")
        assert key == message.key
        sequences[key].append(int(number))
        partitions[key].add(message.partition)
    for key in keys:
        assert sequences[key] == list(range(100)), key
        assert len(partitions[key]) == 1, key


async def test_group_members_share_partitions_and_each_message_goes_to_one(bus: Bus) -> None:
    first, second = bus.consumer([TOPIC], "workers"), bus.consumer([TOPIC], "workers")
    await settle([first, second], TOPIC)
    sent = records(240, keys=120)
    await bus.publish(sent)

    received: dict[int, list[Message]] = {0: [], 1: []}
    deadline = time.monotonic() + WAIT
    while sum(map(len, received.values())) < len(sent):
        assert time.monotonic() < deadline, "not every message arrived"
        batches = await asyncio.gather(first.poll(timeout=0.2), second.poll(timeout=0.2))
        for number, (consumer, batch) in enumerate(zip((first, second), batches, strict=True)):
            if batch:
                await consumer.commit(batch)
            received[number] += batch
    await assert_nothing_more(first, 0.5)
    await assert_nothing_more(second, 0.5)
    await first.close()
    await second.close()

    assert received[0], "the first member got nothing"
    assert received[1], "the second member got nothing"
    assert sorted(values(received[0] + received[1])) == sorted(r.value for r in sent)
    partitions = [{m.partition for m in received[n]} for n in (0, 1)]
    assert not partitions[0] & partitions[1]


async def test_each_group_sees_every_message(bus: Bus) -> None:
    # Both groups exist before the messages: the in-process bus keeps a message only until
    # every group known at the time has committed it.
    routers = bus.consumer([TOPIC], "router")
    auditors = bus.consumer([TOPIC], "audit")
    sent = records(50)
    await bus.publish(sent)
    got_routers = await collect(routers, len(sent), commit=True)
    got_auditors = await collect(auditors, len(sent), commit=True)
    await routers.close()
    await auditors.close()

    expected = sorted(r.value for r in sent)
    assert sorted(values(got_routers)) == expected
    assert sorted(values(got_auditors)) == expected


async def test_uncommitted_messages_are_handed_out_again_after_close(bus: Bus) -> None:
    sent = records(40)
    await bus.publish(sent)
    crashed = bus.consumer([TOPIC], "router")
    first_time = await collect(crashed, len(sent))
    await crashed.close()

    successor = bus.consumer([TOPIC], "router")
    second_time = await collect(successor, len(sent))
    await successor.close()

    assert (
        sorted(values(second_time)) == sorted(values(first_time)) == sorted(r.value for r in sent)
    )


async def test_committed_messages_are_not_handed_out_again(bus: Bus) -> None:
    sent = records(60)
    await bus.publish(sent)
    consumer = bus.consumer([TOPIC], "router")
    got = await collect(consumer, len(sent))
    # Commit the partitions of half the keys only: the others must come again.
    done_partitions = {m.partition for m in got if m.key in {f"user-{k}" for k in range(12)}}
    done = [m for m in got if m.partition in done_partitions]
    await consumer.commit(done)
    await consumer.close()

    later = records(10, tag="later")
    await bus.publish(later)
    successor = bus.consumer([TOPIC], "router")
    expected = [m.value for m in got if m.partition not in done_partitions]
    expected += [r.value for r in later]
    redelivered = await collect(successor, len(expected), commit=True)
    await assert_nothing_more(successor)
    await successor.close()

    assert sorted(values(redelivered)) == sorted(expected)


async def test_commit_covers_earlier_messages_of_the_partition(bus: Bus) -> None:
    await bus.publish([Record(TOPIC, "user-1", f"{i}".encode()) for i in range(10)])
    consumer = bus.consumer([TOPIC], "router")
    got = await collect(consumer, 10)
    await consumer.commit([got[6]])  # offsets 0..6 are done
    await consumer.close()

    successor = bus.consumer([TOPIC], "router")
    again = await collect(successor, 3)
    await assert_nothing_more(successor, 0.5)
    await successor.close()
    assert values(again) == [b"7", b"8", b"9"]


@pytest.mark.timeout(60)  # a poll that ignored its timeout would hang here, not fail
async def test_poll_on_an_empty_topic_returns_nothing_after_the_timeout(bus: Bus) -> None:
    consumer = bus.consumer([TOPIC], "router")
    assert await consumer.poll(max_messages=10, timeout=0.3) == []
    await consumer.close()


async def test_a_poll_without_a_timeout_takes_what_is_ready(bus: Bus) -> None:
    consumer = bus.consumer([TOPIC], "router")
    await settle([consumer], TOPIC)
    assert await consumer.poll(timeout=0) == []
    sent = records(30)
    await bus.publish(sent)
    got = await collect(consumer, len(sent))  # the prefetch is now filled
    more = records(5, tag="more")
    await bus.publish(more)
    ready: list[Message] = []
    deadline = time.monotonic() + WAIT
    while len(ready) < len(more):
        assert time.monotonic() < deadline, f"got {len(ready)} of {len(more)} messages"
        ready += await consumer.poll(timeout=0)
        await asyncio.sleep(0.01)  # nothing waits in poll(timeout=0): let the fetch run
    await consumer.close()
    assert sorted(values(got + ready)) == sorted(r.value for r in sent + more)


async def test_describe_and_healthy(bus: Bus) -> None:
    assert str(PARTITIONS) in bus.describe()
    assert await bus.healthy()
