"""What travels on the bus: small JSON envelopes naming rows in the database."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from herald.bus.interface import (
    DEAD_LETTER_TOPIC,
    Message,
    Record,
    deliveries_topic,
    lane_for,
    notifications_topic,
)


def notification_record(notification_id: str, user_id: str, priority: str) -> Record:
    topic = notifications_topic(lane_for(priority))
    return Record(topic, user_id, orjson.dumps({"notification_id": notification_id}))


def delivery_record(delivery_id: str, user_id: str, channel: str, priority: str) -> Record:
    topic = deliveries_topic(channel, lane_for(priority))
    return Record(topic, user_id, orjson.dumps({"delivery_id": delivery_id}))


def dead_letter_record(delivery_id: str, user_id: str, channel: str, error: str) -> Record:
    body = {"delivery_id": delivery_id, "channel": channel, "error": error}
    return Record(DEAD_LETTER_TOPIC, user_id, orjson.dumps(body))


def ids_in(messages: Iterable[Message], field: str) -> list[str]:
    """The ids named by `field`, in order, without repeats; malformed messages are skipped
    (they cannot name a row, so there is nothing to redo)."""
    seen: dict[str, None] = {}
    for message in messages:
        try:
            value = orjson.loads(message.value).get(field)
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, str):
            seen[value] = None
    return list(seen)


_NAMED_IDS = ("notification_id", "delivery_id", "broadcast_id")


def named_ids(message: Message) -> dict[str, str]:
    """The row ids a message names (for logs): notification_id, delivery_id, broadcast_id."""
    try:
        value = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k in _NAMED_IDS if isinstance(v := value.get(k), str)}


def set_aside_record(message: Message, group: str, error: str) -> Record:
    """A consumed message that could not be processed, on the dead-letter topic: where it
    came from, which consumer group gave up on it, the ids it names and the error."""
    body: dict[str, object] = {
        "set_aside_by": group,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key,
        "message": message.value.decode("utf-8", "replace"),
        "error": error,
        **named_ids(message),
    }
    return Record(DEAD_LETTER_TOPIC, message.key or group, orjson.dumps(body))
