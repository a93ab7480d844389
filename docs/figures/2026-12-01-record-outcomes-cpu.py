"""Client CPU and wall time of recording a worker's outcomes on PostgreSQL: the old way
(BEGIN, the guarded UPDATE, COPY of the log events, COMMIT) against the one statement of
herald.storage.native (a data-modifying CTE), for a batch of SIZE outcomes, alternating.

    createdb <db>; HERALD_DATABASE_URL=postgresql://.../<db> .venv/bin/herald migrate
    PYTHONPATH=src .venv/bin/python docs/figures/2026-12-01-record-outcomes-cpu.py \
        postgresql://.../<db> SIZE ROUNDS
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from herald.domain import DeliveryState
from herald.storage import DeliveryUpdate
from herald.storage import native as n

# The statement the worker ran before the CTE (with the same guard for `sending` rows).
OLD_UPDATE = """
UPDATE deliveries AS d SET state = u.state, provider = coalesce(u.provider, d.provider),
    provider_message_id = coalesce(u.message_id, d.provider_message_id), last_error = u.error,
    due_at = u.due, lease_until = NULL, attempts = d.attempts - u.refund, updated_at = $8
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::int[]) AS u(id, state, provider, message_id, error, due, refund)
WHERE d.id = u.id AND d.state = 'sending'
"""
SEED = (
    "INSERT INTO deliveries (id, notification_id, user_id, channel, target, target_ref, state,"
    " policy, priority, category, payload, created_at, updated_at) VALUES ($1, $1, 'u', 'push',"
    " 't', 'r', 'sending', 'at_least_once', 'normal', 'c', '{}'::jsonb, $2, $2)"
)
Batch = tuple[list[DeliveryUpdate], list[dict[str, Any]], datetime]


async def seed(connection: asyncpg.Connection, size: int) -> Batch:
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(size)]
    await connection.executemany(SEED, [(i, now) for i in ids])
    updates = [DeliveryUpdate(i, i, DeliveryState.SENT, "fcm", "m") for i in ids]
    events = [
        {
            "delivery_id": i,
            "notification_id": i,
            "state": "sent",
            "provider": "fcm",
            "detail": {"attempt": 1, "provider_message_id": "m"},
            "created_at": now,
        }
        for i in ids
    ]
    return updates, events, now


async def old(connection: asyncpg.Connection, batch: Batch) -> None:
    updates, events, now = batch
    async with connection.transaction():
        await connection.execute(
            OLD_UPDATE,
            [u.delivery_id for u in updates],
            [u.state.value for u in updates],
            [u.provider for u in updates],
            [u.provider_message_id for u in updates],
            [u.last_error for u in updates],
            [u.due_at for u in updates],
            [1 if u.attempts_refund else 0 for u in updates],
            now,
        )
        await connection.copy_records_to_table(
            "delivery_events",
            columns=n.EVENT_COLUMNS,
            records=[
                (
                    e["delivery_id"],
                    e["notification_id"],
                    e["state"],
                    e["provider"],
                    n.json_dumps(e["detail"]),
                    e["created_at"],
                )
                for e in events
            ],
        )


async def new(connection: asyncpg.Connection, batch: Batch) -> None:
    await n.AsyncpgNative(connection).record_outcomes(*batch)


async def main(url: str, size: int, rounds: int) -> None:
    connection = await asyncpg.connect(url, server_settings={"jit": "off"})
    timings: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    ways = [("old", old), ("new", new)]
    for round_ in range(rounds):
        for name, way in ways if round_ % 2 == 0 else ways[::-1]:
            batch = await seed(connection, size)
            cpu, wall = time.process_time(), time.perf_counter()
            await way(connection, batch)
            timings[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    for name, runs in timings.items():
        kept = runs[2:]  # the first statements prepare and warm the caches
        print(
            f"{name} size={size}: client CPU median "
            f"{statistics.median(c for c, _ in kept) * 1e3:.3f} ms, wall median "
            f"{statistics.median(w for _, w in kept) * 1e3:.3f} ms ({len(kept)} rounds)"
        )
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
