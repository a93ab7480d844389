"""scripts/test prunes the topics earlier runs left on the broker, and only those."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.fixtures.herald import eventually
from tests.fixtures.leftovers import LEFTOVER, prune


@pytest.mark.parametrize(
    ("name", "left_over"),
    [
        ("t0a1b2c3d4e.herald.notifications", True),  # tests/fixtures/herald.py
        ("test-0a1b2c3d4e5f.herald.deliveries.push", True),  # tests/fixtures/services.py
        ("bench0a1b2c3d.herald.notifications.priority", True),  # herald bench
        ("fleet0a1b2c3d.herald.deliveries.sms", True),  # tests/fixtures/serve.py
        ("sse0a1b2c3d.herald.deliveries.in_app", True),  # tests/test_serve.py
        ("herald.notifications", False),  # a deployment's own topics
        ("acme.herald.notifications", False),
        ("__consumer_offsets", False),
    ],
)
def test_only_the_test_and_bench_prefixes_are_left_overs(name: str, left_over: bool) -> None:
    assert bool(LEFTOVER.match(name)) is left_over


@pytest.mark.kafka
async def test_prune_deletes_the_matching_topics(kafka_bootstrap: str) -> None:
    mine = f"prune{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    names = [f"{mine}.a", f"{mine}.b"]
    for future in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        await asyncio.wrap_future(future)

    async def listed() -> bool:  # a created topic reaches the metadata a moment later
        metadata = await asyncio.to_thread(admin.list_topics, timeout=10)
        return set(names) <= set(metadata.topics)

    await eventually(listed)
    pruned = await asyncio.to_thread(prune, kafka_bootstrap, re.compile(rf"^{mine}\."))
    assert pruned == names

    async def gone() -> bool:  # and a deleted one leaves it a moment later
        metadata = await asyncio.to_thread(admin.list_topics, timeout=10)
        return not [n for n in metadata.topics if n.startswith(mine)]

    await eventually(gone)
