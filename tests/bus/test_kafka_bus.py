"""KafkaBus behaviour beyond the shared contract (test_bus_contract.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from herald.bus.interface import NOTIFICATIONS_TOPIC, BusUnavailable, Message, Record
from herald.bus.kafka import KafkaBus, LibrdkafkaLog
from herald.config import Settings
from herald.runtime import make_bus
from tests.fixtures.bus import TOPIC, WAIT, assert_nothing_more, collect, records, values
from tests.fixtures.herald import eventually
from tests.fixtures.services import StartKafkaBus

# Longer than any of these tests runs: what is committed with it was committed by close().
INTERVAL_NOT_ELAPSED_MS = 60_000


@pytest.mark.timeout(30)  # a start that ignored connect_timeout would hang, not fail
async def test_start_without_a_broker_raises_bus_unavailable_naming_the_address() -> None:
    bus = KafkaBus("127.0.0.1:1", connect_timeout=1.0)
    with pytest.raises(BusUnavailable, match=r"127\.0\.0\.1:1"):
        await bus.start()
    assert not await bus.healthy()


def test_describe_names_the_broker_and_partitions() -> None:
    assert (
        KafkaBus("127.0.0.1:9092", partitions=6).describe() == "kafka 127.0.0.1:9092 (6 partitions)"
    )


@pytest.mark.kafka
async def test_a_cancelled_poll_hands_its_messages_to_the_next_poll(kafka_bus: KafkaBus) -> None:
    consumer = kafka_bus.consumer([NOTIFICATIONS_TOPIC], "router")
    deadline = time.monotonic() + 30
    while len(await consumer.assigned_partitions()) < kafka_bus.partitions:
        assert await consumer.poll(timeout=0.2) == []
        assert time.monotonic() < deadline, "the consumer never got its partitions"

    waiting = asyncio.create_task(consumer.poll(timeout=10))
    await asyncio.sleep(0.2)  # the fetch is now blocked in the consumer's thread
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # A poll without a timeout does not wait for the given-up one (a guard, not a timing:
    # that fetch runs for 10 s).
    assert await asyncio.wait_for(consumer.poll(timeout=0), 5) == []
    await kafka_bus.publish([Record(NOTIFICATIONS_TOPIC, "user-1", b"not lost")])

    assert [m.value for m in await consumer.poll(timeout=10)] == [b"not lost"]
    await consumer.close()


@pytest.mark.kafka
async def test_polls_while_messages_flow_take_what_is_fetched_without_the_thread(
    kafka_bus: KafkaBus,
) -> None:
    sent = [Record(NOTIFICATIONS_TOPIC, f"user-{i % 24}", b"%d" % i) for i in range(300)]
    await kafka_bus.publish(sent)
    consumer = kafka_bus.consumer([NOTIFICATIONS_TOPIC], "router")
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < len(sent):
        assert time.monotonic() < deadline, f"got {len(got)} of {len(sent)} messages"
        batch = await consumer.poll(max_messages=10, timeout=1.0)
        await consumer.commit(batch)
        got += [m.value for m in batch]
    await consumer.close()

    assert sorted(got) == sorted(r.value for r in sent)
    # librdkafka prefetches far more than 10 messages, so most polls find them ready and
    # are answered on the loop; the thread waits only when nothing is fetched yet.
    assert consumer.polls_on_loop > consumer.polls_on_thread


@pytest.mark.kafka
async def test_a_poll_with_no_timeout_never_waits_on_the_thread(kafka_bus: KafkaBus) -> None:
    consumer = kafka_bus.consumer([NOTIFICATIONS_TOPIC], "router")
    assert await consumer.poll(timeout=0) == []
    assert consumer.polls_on_thread == 0
    await consumer.close()


def test_librdkafka_fail_lines_go_out_at_debug_and_the_rest_as_they_come(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What confluent-kafka hands its `logger`: (level, "%s [%s] %s", facility, client, text).
    caplog.set_level(logging.DEBUG, logger="herald.bus.kafka")
    librdkafka = LibrdkafkaLog()
    librdkafka.log(logging.ERROR, "%s [%s] %s", "FAIL", "herald#consumer-5", "Connect failed")
    librdkafka.log(logging.WARNING, "%s [%s] %s", "SASL", "herald#producer-1", "Auth failed")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "FAIL [herald#consumer-5] Connect failed"),
        (logging.WARNING, "SASL [herald#producer-1] Auth failed"),
    ]


def test_the_commit_interval_comes_from_the_configuration() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9092", kafka_commit_interval_ms=250)
    bus = make_bus(settings)
    assert isinstance(bus, KafkaBus)
    assert bus.commit_interval_ms == 250
    assert KafkaBus("127.0.0.1:9092").commit_interval_ms == 500


async def committed_offsets(bus: KafkaBus, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the group's committed offset, as the broker has it."""
    name = bus.topic_prefix + group
    admin = AdminClient({"bootstrap.servers": bus.bootstrap})
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(name)])
    answer = await asyncio.wrap_future(futures[name])
    return {
        (tp.topic.removeprefix(bus.topic_prefix), tp.partition): tp.offset
        for tp in answer.topic_partitions
        if tp.offset >= 0
    }


def next_offsets(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """What committing `messages` commits: per partition, the offset after the last one."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        slot = (message.topic, message.partition)
        offsets[slot] = max(offsets.get(slot, 0), message.offset + 1)
    return offsets


def split_by_partition(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """The messages of half the partitions they came from, and the rest."""
    partitions = sorted({m.partition for m in messages})
    chosen = set(partitions[: len(partitions) // 2])
    return [m for m in messages if m.partition in chosen], [
        m for m in messages if m.partition not in chosen
    ]


@pytest.mark.kafka
async def test_a_member_that_closes_commits_what_it_stored_before_the_interval_elapsed(
    start_kafka_bus: StartKafkaBus,
) -> None:
    bus = await start_kafka_bus(commit_interval_ms=INTERVAL_NOT_ELAPSED_MS)
    sent = records(60)
    await bus.publish(sent)
    member = bus.consumer([TOPIC], "router")
    handled, not_handled = split_by_partition(await collect(member, len(sent)))
    await member.commit(handled)
    # commit() only stored the offsets: no commit request went to the broker.
    assert await committed_offsets(bus, "router") == {}
    await member.close()

    assert await committed_offsets(bus, "router") == next_offsets(handled)
    successor = bus.consumer([TOPIC], "router")
    again = await collect(successor, len(not_handled))
    await assert_nothing_more(successor)
    await successor.close()
    assert sorted(values(again)) == sorted(values(not_handled))


@pytest.mark.kafka
async def test_a_member_that_stays_up_commits_what_it_stored_on_the_timer(
    start_kafka_bus: StartKafkaBus,
) -> None:
    bus = await start_kafka_bus(commit_interval_ms=200)
    sent = records(60)
    await bus.publish(sent)
    member = bus.consumer([TOPIC], "router")
    handled, _not_handled = split_by_partition(await collect(member, len(sent)))
    await member.commit(handled)

    async def committed_as_stored() -> bool:
        return await committed_offsets(bus, "router") == next_offsets(handled)

    # Only what was stored: the messages handed out but not committed stay uncommitted.
    await eventually(committed_as_stored, timeout=WAIT)
    assert await member.assigned_partitions(), "the member left the group before its commit"
    await member.close()


@pytest.mark.kafka
async def test_a_commit_for_partitions_a_rebalance_took_goes_to_their_new_owner(
    start_kafka_bus: StartKafkaBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await start_kafka_bus(commit_interval_ms=INTERVAL_NOT_ELAPSED_MS)
    sent = records(60)
    await bus.publish(sent)
    first = bus.consumer([TOPIC], "router")
    got = await collect(first, len(sent))
    second = bus.consumer([TOPIC], "router")
    handed_to_second: list[Message] = []
    deadline = time.monotonic() + WAIT
    while not (await first.assigned_partitions() and await second.assigned_partitions()):
        assert time.monotonic() < deadline, "the second member never got partitions"
        await first.poll(timeout=0.2)  # the first member takes part in the rebalance here
        handed_to_second += await second.poll(timeout=0.2)
    kept = {partition for _topic, partition in await first.assigned_partitions()}
    taken = [m for m in got if m.partition not in kept]
    assert taken, "the rebalance took no partition that had messages"

    caplog.set_level(logging.INFO, logger="herald.bus.kafka")
    await first.commit(taken)  # too late: not an outage, the new owner has them

    assert "commit after a rebalance" in caplog.text
    handed_to_second += await collect(second, len(taken) - len(handed_to_second))
    await first.close()
    await second.close()
    assert set(values(taken)) <= set(values(handed_to_second))
