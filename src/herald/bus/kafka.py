"""The Kafka bus, on confluent-kafka (librdkafka).

librdkafka calls that block never run on the event loop: the producer's delivery reports are
served by one poller thread, and each consumer waits for messages on its own single thread.
What does not block runs on the loop, so a busy consumer pays no thread hop per batch: a
poll first takes what librdkafka has already fetched (`consume(timeout=0)`), and only when
nothing is ready waits on the thread. A commit only stores the offsets in librdkafka
(`store_offsets`); its background thread sends them to the broker on its auto-commit timer,
when a rebalance revokes partitions, and in close(), so a batch costs no request of its own.
Calls on the loop are made only while no call is running on the thread, so poll, commit and
close still reach the client one at a time and in the order they were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as RawMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import TopicMetadata
from confluent_kafka.cimpl import NewTopic

from herald.bus.interface import ALL_TOPICS, BusUnavailable, Message, Record

log = logging.getLogger(__name__)

T = TypeVar("T")

# Commit failures that mean "the group moved on": those partitions now belong to another
# member, which will be handed the uncommitted messages again (at-least-once).
_REBALANCE_ERRORS = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)
# What store_offsets raises when none of the offsets could be stored because a rebalance
# took their partitions from this member (_STATE: no longer assigned; _UNKNOWN_PARTITION:
# not known to this client any more): the same case as above, seen before the commit.
_UNASSIGNED_ERRORS = frozenset({KafkaError._STATE, KafkaError._UNKNOWN_PARTITION})


# A poll with a long timeout waits in slices of this on the consumer's thread (see _fetch).
FETCH_SLICE_SECONDS = 0.5
# A poll measures the lag at most this often (it asks librdkafka for every partition's
# position and watermarks, which per batch cost more than the batch's own consume at light
# load), except a poll that found nothing, which always does: a consumer that caught up
# reads 0 within one poll timeout.
LAG_REFRESH_SECONDS = 1.0

# Reported about once a second while a broker is unreachable; BusUnavailable and healthy()
# tell the caller, so these stay out of the warnings.
_CONNECTION_ERRORS = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


def _log_error(error: KafkaError) -> None:
    level = logging.INFO if error.code() in _CONNECTION_ERRORS else logging.WARNING
    log.log(level, "kafka: %s", error.str())


class LibrdkafkaLog:
    """librdkafka's own log lines (its `logger` setting), passed on to `log`, except its FAIL
    lines ("Connect to ... failed", "Disconnected"): every client repeats them while a
    broker is unreachable, thousands in a short outage, and `_log_error` has already said
    so, once a second at INFO, with the error's code. They go out at DEBUG."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        if args and args[0] == "FAIL":
            level = logging.DEBUG
        log.log(level, fmt, *args)


def _has_leaders(topic: TopicMetadata | None) -> bool:
    return (
        topic is not None
        and topic.error is None
        and bool(topic.partitions)
        and all(p.leader >= 0 for p in topic.partitions.values())
    )


class _Acks:
    """Delivery callback of one publish() batch: resolves its future once every record is
    acknowledged, with the first error if any. Runs on the producer's poller thread."""

    __slots__ = ("_loop", "_remaining", "error", "fatal", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self._remaining = count
        self.error: KafkaError | None = None
        self.fatal = False
        self.future: asyncio.Future[None] = loop.create_future()

    def __call__(self, error: KafkaError | None, _message: RawMessage) -> None:
        if error is not None and self.error is None:
            self.error = error
            self.fatal = error.fatal()
        self._remaining -= 1
        if self._remaining == 0:
            # RuntimeError: the publishing loop is gone, so nobody waits for this batch.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class KafkaBus:
    def __init__(
        self,
        bootstrap: str,
        *,
        partitions: int = 12,
        topic_prefix: str = "",
        client_id: str = "herald",
        session_timeout_ms: int = 6000,
        # A third of the session timeout, as Kafka advises: each heartbeat is a request to
        # the broker, and at 500 ms the heartbeats of an idle fleet's dozen consumers were
        # most of what it cost (docs/benchmarks.md, "Idle fleet"). A member learns of a
        # rebalance at its next heartbeat, so within 2 s.
        heartbeat_interval_ms: int = 2000,
        # How long the broker holds a fetch that finds nothing: it answers as soon as a
        # message arrives, so this costs no latency, only how often an idle consumer asks.
        fetch_wait_max_ms: int = 2000,
        # How often librdkafka commits the offsets stored since its last commit (one
        # OffsetCommit request per consumer, none while nothing moved). A member that
        # crashes hands out again what it handled in the last interval (at 1,000/s, about
        # 500 messages, which the deterministic delivery ids turn into no second send); a
        # member that closes or loses partitions in a rebalance commits at once. 500 ms
        # caps the requests at two a second per consumer, where one per batch was up to
        # one per delivery at light load.
        commit_interval_ms: int = 500,
        connect_timeout: float = 5.0,
        delivery_timeout: float = 30.0,
        leader_timeout: float = 60.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """`config` holds extra librdkafka settings for every client (they win).

        `leader_timeout` bounds the wait for new topics' partitions to get leaders. It is
        not a connectivity check (the broker already answered): the controller elects the
        leaders of every new partition one after another, which on a loaded machine takes
        far longer than a round trip."""
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.topic_prefix = topic_prefix
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.commit_interval_ms = commit_interval_ms
        self.connect_timeout = connect_timeout
        self.delivery_timeout = delivery_timeout
        self.leader_timeout = leader_timeout
        self._extra = dict(config or {})
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._publishing = threading.Event()  # wakes the idle delivery-report poller
        self._known_topics: set[str] = set()
        self._topics_lock = asyncio.Lock()
        self._consumers: set[KafkaConsumer] = set()

    # -- naming ---------------------------------------------------------------------------

    def topic_name(self, topic: str) -> str:
        return self.topic_prefix + topic

    def _client_config(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        base = {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            # Reconnect quickly after a broker restart (the default backs off up to 10 s).
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
        }
        return {**base, **(settings or {}), **self._extra}

    def _polled_client_config(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Config of a client whose poll() we call often, which is where librdkafka's logs
        and errors are handed to these callbacks (the admin client is never polled)."""
        return self._client_config({"error_cb": _log_error, "logger": LibrdkafkaLog(), **settings})

    def _unavailable(self, what: str, error: object) -> BusUnavailable:
        return BusUnavailable(f"Kafka at {self.bootstrap}: {what}: {error}")

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = self._new_producer()
        try:
            metadata = await asyncio.to_thread(producer.list_topics, timeout=self.connect_timeout)
        except KafkaException as exc:
            raise self._unavailable(
                f"no broker answered within {self.connect_timeout:g} s", exc
            ) from exc
        self._known_topics = set(metadata.topics)
        await self.ensure_topics(ALL_TOPICS)
        self._producer = producer
        self._stopping.clear()
        self._poller = threading.Thread(
            target=self._serve_deliveries, name="kafka-producer-poll", daemon=True
        )
        self._poller.start()

    def _new_producer(self) -> Producer:
        config = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(self.delivery_timeout * 1000),
        }
        return Producer(self._polled_client_config(config))

    def _serve_deliveries(self) -> None:
        """Serve delivery reports while messages are in flight; with none, wait for the
        next publish (or close), serving logs and errors once a second."""
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                return
            try:
                if len(producer):
                    producer.poll(0.1)  # returns as soon as a report is served
                else:
                    self._publishing.wait(1.0)
                    self._publishing.clear()
                    producer.poll(0)
            except Exception:  # an error raised by a callback must not stop the reports
                log.exception("kafka: serving delivery reports failed")

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()
        self._stopping.set()
        self._publishing.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
            self._poller = None
        if self._producer is not None:
            remaining = await asyncio.to_thread(self._producer.flush, self.delivery_timeout)
            if remaining:
                log.warning("kafka: %d messages not delivered at close", remaining)
            self._producer = None

    def describe(self) -> str:
        prefix = f", topic prefix {self.topic_prefix!r}" if self.topic_prefix else ""
        return f"kafka {self.bootstrap} ({self.partitions} partitions{prefix})"

    async def healthy(self) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.to_thread(
                self._producer.list_topics, self.topic_name(ALL_TOPICS[0]), timeout=2.0
            )
        except KafkaException:
            return False
        return True

    # -- topics ---------------------------------------------------------------------------

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics (logical names) that do not exist yet."""
        missing = {self.topic_name(t) for t in topics} - self._known_topics
        if not missing:
            return
        async with self._topics_lock:
            missing -= self._known_topics
            if not missing:
                return
            # An admin client only while topics are created (at start, in practice): an idle
            # librdkafka instance costs threads, timers and broker connections for good.
            admin = AdminClient(self._client_config())
            futures = admin.create_topics(
                [NewTopic(name, self.partitions, replication_factor=-1) for name in missing],
                request_timeout=self.connect_timeout,
            )
            for name, future in futures.items():
                try:
                    await asyncio.wrap_future(future)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise self._unavailable(f"creating topic {name}", exc) from exc
            await asyncio.to_thread(self._await_leaders, admin, sorted(missing))
            self._known_topics |= missing

    def _await_leaders(self, admin: AdminClient, names: list[str]) -> None:
        """Wait until the new topics have leaders: a consumer subscribing to a topic its
        metadata does not show yet would not see it until the next metadata refresh."""
        deadline = time.monotonic() + self.leader_timeout
        for name in names:
            while True:
                topic: TopicMetadata | None = None
                reason: object = "not in metadata"
                try:
                    topic = admin.list_topics(name, timeout=self.connect_timeout).topics.get(name)
                except KafkaException as exc:  # a slow metadata answer: ask again
                    reason = exc
                if _has_leaders(topic):
                    break
                if time.monotonic() > deadline:
                    if topic is not None and topic.error is not None:
                        reason = topic.error
                    raise self._unavailable(f"topic {name} has no leader", reason)
                time.sleep(0.05)

    # -- producing ------------------------------------------------------------------------

    @staticmethod
    def _require(client: T | None) -> T:
        if client is None:
            raise RuntimeError("KafkaBus.start() was not called (or the bus is closed)")
        return client

    async def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        producer = self._require(self._producer)
        await self.ensure_topics({record.topic for record in records})
        acks = _Acks(asyncio.get_running_loop(), len(records))
        for record in records:
            await self._produce(producer, record, acks)
        self._publishing.set()
        try:
            # librdkafka reports a timeout itself after message.timeout.ms; this is a backstop.
            await asyncio.wait_for(asyncio.shield(acks.future), self.delivery_timeout + 10)
        except TimeoutError as exc:
            raise self._unavailable("no delivery report", "timed out") from exc
        if acks.error is not None:
            if acks.fatal:
                # The idempotent producer cannot go on after a fatal error: start a new one.
                self._producer = self._new_producer()
            raise self._unavailable("publish failed", acks.error.str())

    async def _produce(self, producer: Producer, record: Record, acks: _Acks) -> None:
        while True:
            try:
                producer.produce(
                    self.topic_name(record.topic), record.value, record.key, on_delivery=acks
                )
                return
            except BufferError:
                # The local queue is full: let the poller thread drain delivery reports.
                self._publishing.set()
                await asyncio.sleep(0.01)

    # -- consuming ------------------------------------------------------------------------

    def held_in_memory(self) -> int:
        return 0  # the broker holds the backlog; consumer prefetch is bounded (_consumer_config)

    def consumer(self, topics: Sequence[str], group: str) -> KafkaConsumer:
        consumer = KafkaConsumer(self, tuple(topics), self.topic_prefix + group)
        self._consumers.add(consumer)
        return consumer

    def _consumer_config(self, group: str) -> dict[str, Any]:
        config = {
            "group.id": group,
            # At-least-once with cheap commits: only offsets that commit() stored, after
            # their batch was handled, are committed, by librdkafka in the background.
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": self.commit_interval_ms,
            "auto.offset.reset": "earliest",
            # Prefetch a few batches, not librdkafka's default of up to 100,000 messages or
            # 64 MB, and fetch at most 1 MB at a time (default: 1 MB per partition, 50 MB
            # per fetch, on top of the prefetch bound): memory must not grow with the
            # backlog (docs/benchmarks.md, "Figures behind code choices").
            "queued.min.messages": 2_000,
            "queued.max.messages.kbytes": 2048,
            "fetch.max.bytes": 1_048_576,
            "max.partition.fetch.bytes": 262_144,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
        }
        return self._polled_client_config(config)

    def _forget(self, consumer: KafkaConsumer) -> None:
        self._consumers.discard(consumer)


class KafkaConsumer:
    def __init__(self, bus: KafkaBus, topics: tuple[str, ...], group: str) -> None:
        self._bus = bus
        self.topics = topics
        self.group = group
        self._prefix_len = len(bus.topic_prefix)
        self._consumer = Consumer({**bus._consumer_config(group), "on_commit": self._committed})
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{group}")
        self._subscribed = False
        self._closed = False
        self._closing = threading.Event()  # ends a long fetch early (close)
        self._in_flight: asyncio.Future[list[Message]] | None = None
        self._lag: dict[str, int] = dict.fromkeys(topics, 0)
        self._lag_measured = 0.0  # time.monotonic() of the last measurement
        # Polls answered on the loop and on the consumer's thread (diagnostics and tests).
        self.polls_on_loop = 0
        self.polls_on_thread = 0

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    async def poll(self, max_messages: int = 500, timeout: float = 1.0) -> list[Message]:
        if self._closed:
            return []
        if not self._subscribed:
            await self._bus.ensure_topics(self.topics)
            names = [self._bus.topic_name(t) for t in self.topics]
            await self._call(self._consumer.subscribe, names)
            self._subscribed = True
        if self._in_flight is None:
            ready = self._take_ready(max_messages)
            if ready or timeout <= 0:
                self.polls_on_loop += 1
                return ready
            loop = asyncio.get_running_loop()
            self._in_flight = loop.run_in_executor(self._thread, self._fetch, max_messages, timeout)
            self.polls_on_thread += 1
        elif timeout <= 0 and not self._in_flight.done():
            return []  # a given-up poll is still waiting on the thread
        fetch = self._in_flight
        try:
            messages = await asyncio.shield(fetch)
        except asyncio.CancelledError:
            # The fetch goes on; its messages (already past the consumer's position) are
            # handed out by the next poll instead of being lost.
            raise
        except KafkaException as exc:
            self._in_flight = None
            raise self._bus._unavailable(f"consumer {self.group}", exc) from exc
        self._in_flight = None
        return messages

    def _take_ready(self, max_messages: int) -> list[Message]:
        """What librdkafka has already fetched, without waiting (on the loop: no thread hop
        while messages are flowing)."""
        try:
            batch = self._consumer.consume(max_messages, 0)
            messages = [message for raw in batch if (message := self._convert(raw)) is not None]
        except KafkaException as exc:
            raise self._bus._unavailable(f"consumer {self.group}", exc) from exc
        if batch:
            self._measure_lag_now_and_then()
        return messages

    def _fetch(self, max_messages: int, timeout: float) -> list[Message]:
        # consume() would wait out the whole timeout for a full batch; poll() returns on the
        # first message, then consume(timeout=0) takes what is already fetched. A long
        # timeout is waited in slices, so that close() (queued behind this on the
        # consumer's thread) never waits for more than one.
        deadline = time.monotonic() + timeout
        first = None
        while first is None and not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            first = self._consumer.poll(min(remaining, FETCH_SLICE_SECONDS))
        if first is None:
            self._measure_lag()
            return []
        batch = [first]
        if max_messages > 1:
            batch += self._consumer.consume(max_messages - 1, 0)
        self._measure_lag_now_and_then()
        return [message for raw in batch if (message := self._convert(raw)) is not None]

    def _measure_lag_now_and_then(self) -> None:
        if time.monotonic() - self._lag_measured >= LAG_REFRESH_SECONDS:
            self._measure_lag()

    def _measure_lag(self) -> None:
        """From the high watermarks the last fetches brought (cached: no request)."""
        behind = dict.fromkeys(self.topics, 0)
        for tp in self._consumer.position(self._consumer.assignment()):
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                topic = tp.topic[self._prefix_len :]
                behind[topic] = behind.get(topic, 0) + max(0, high - tp.offset)
        self._lag = behind
        self._lag_measured = time.monotonic()

    def lag(self) -> dict[str, int]:
        return dict(self._lag)

    def _convert(self, raw: RawMessage) -> Message | None:
        error = raw.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            log.warning("kafka consumer %s: %s", self.group, error.str())
            return None
        key = raw.key()
        return Message(
            topic=(raw.topic() or "")[self._prefix_len :],
            key=key.decode() if key is not None else "",
            value=raw.value() or b"",
            partition=raw.partition() or 0,
            offset=raw.offset() or 0,
        )

    async def commit(self, messages: Sequence[Message]) -> None:
        """Mark the messages handled: their offsets are committed within the commit
        interval, or at once when this member closes or a rebalance takes the partition."""
        if not messages or self._closed:
            return
        positions: dict[tuple[str, int], int] = {}
        for message in messages:
            slot = (message.topic, message.partition)
            positions[slot] = max(positions.get(slot, 0), message.offset + 1)
        offsets = [
            TopicPartition(self._bus.topic_name(topic), partition, offset)
            for (topic, partition), offset in positions.items()
        ]
        try:
            if self._in_flight is None:
                self._store(offsets)  # does not block: no thread hop
            else:  # a given-up poll still runs on the thread: queue behind it
                await self._call(self._store, offsets)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() in _UNASSIGNED_ERRORS:
                log.info("kafka consumer %s: commit after a rebalance: %s", self.group, error)
                return
            raise self._bus._unavailable("commit failed", error.str()) from exc

    def _store(self, offsets: list[TopicPartition]) -> None:
        """Store the offsets for librdkafka's next commit (in memory, no request). It raises
        only when none could be stored; offsets of partitions another member took are
        dropped, and that member is handed those messages again (at-least-once)."""
        self._consumer.store_offsets(offsets=offsets)

    def _committed(self, error: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        """The result of librdkafka's commits (timer, revoke, close), served by a poll or by
        close(). Processing is already recorded, so a commit that fails only means those
        messages are handed out again."""
        if error is None:
            return
        level = logging.INFO if error.code() in _REBALANCE_ERRORS else logging.WARNING
        log.log(level, "kafka consumer %s: commit failed, redelivered later: %s", self.group, error)

    async def assigned_partitions(self) -> set[tuple[str, int]]:
        """(topic, partition) pairs this member holds now (for tests and diagnostics)."""
        if self._closed:
            return set()
        assignment = await self._call(self._consumer.assignment)
        return {(tp.topic[self._prefix_len :], tp.partition) for tp in assignment}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._bus._forget(self)
        try:
            await self._call(self._consumer.close)
        finally:
            self._thread.shutdown(wait=False)
