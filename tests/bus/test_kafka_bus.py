"""KafkaBus behaviour beyond the shared contract (test_bus_contract.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from herald.bus.interface import NOTIFICATIONS_TOPIC, BusUnavailable, Record
from herald.bus.kafka import KafkaBus, LibrdkafkaLog


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
