"""What a send that writes no log row saves (migration 0017): the worker's outcome statement
(herald.storage.native.RECORD_SQL_POSTGRES) for a batch of SIZE sends, once with every send
logged (told = false: an event row each, as before 0017) and once told by the row (told =
true: `sent_at` set, no event), alternating. Prints, per mode, the median client CPU and
wall time per batch, and the PostgreSQL backend's CPU per send (schedstat of the backend
process, so the server must run on this machine), and the WAL bytes per send.

    createdb <db>; HERALD_DATABASE_URL=postgresql://.../<db> .venv/bin/herald migrate
    PYTHONPATH=src .venv/bin/python docs/figures/2026-12-04-told-sends.py \
        postgresql://.../<db> SIZE ROUNDS
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from herald.domain import DeliveryState
from herald.storage import DeliveryUpdate
from herald.storage import native as n
from herald.storage.rows import attempt_detail

SEED = (
    "INSERT INTO deliveries (id, notification_id, user_id, channel, target, target_ref, state,"
    " policy, priority, category, payload, attempts, claimed_at, created_at, updated_at)"
    " VALUES ($1, $1, 'u', 'push', 't', 'r', 'sending', 'at_least_once', 'normal', 'c',"
    " '{}'::jsonb, 1, $2, $2, $2)"
)


def backend_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def seed(connection: asyncpg.Connection, size: int) -> tuple[list[DeliveryUpdate], Any]:
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(size)]
    await connection.executemany(SEED, [(i, now) for i in ids])
    updates = [
        DeliveryUpdate(i, i, DeliveryState.SENT, "fcm", f"m-{i}", attempt=1, claimed_at=now)
        for i in ids
    ]
    return updates, now


async def record(connection: asyncpg.Connection, updates: list[DeliveryUpdate], now: Any) -> None:
    events = [
        {
            "delivery_id": u.delivery_id,
            "notification_id": u.notification_id,
            "state": u.state.value,
            "provider": u.provider,
            "detail": attempt_detail(u.attempt, u.claimed_at, u.provider_message_id),
            "created_at": now,
        }
        for u in updates
    ]
    await n.AsyncpgNative(connection).record_outcomes(updates, events, now)


async def main(url: str, size: int, rounds: int) -> None:
    connection = await asyncpg.connect(url, server_settings={"jit": "off"})
    pid = await connection.fetchval("SELECT pg_backend_pid()")
    figures: dict[str, dict[str, list[float]]] = {
        mode: {"cpu": [], "wall": [], "server": [], "wal": []} for mode in ("logged", "told")
    }
    modes = list(figures)
    for round_ in range(rounds):
        for mode in modes if round_ % 2 == 0 else modes[::-1]:
            updates, now = await seed(connection, size)
            if mode == "logged":  # a detail the row cannot tell: the event is written
                updates = [replace(u, detail={"logged": True}) for u in updates]
            wal = await connection.fetchval("SELECT pg_current_wal_insert_lsn()")
            server, cpu, wall = backend_ns(pid), time.process_time(), time.perf_counter()
            await record(connection, updates, now)
            taken = figures[mode]
            taken["wall"].append(time.perf_counter() - wall)
            taken["cpu"].append(time.process_time() - cpu)
            taken["server"].append((backend_ns(pid) - server) / size)
            wrote = await connection.fetchval(
                "SELECT pg_current_wal_insert_lsn() - $1::pg_lsn", wal
            )
            taken["wal"].append(float(wrote) / size)
    for mode, taken in figures.items():
        kept = {k: v[2:] for k, v in taken.items()}  # the first prepare and warm the caches
        print(
            f"{mode:6} size={size}: client CPU {statistics.median(kept['cpu']) * 1e3:.3f} ms,"
            f" wall {statistics.median(kept['wall']) * 1e3:.3f} ms per batch; server CPU"
            f" {statistics.median(kept['server']) / 1e3:.1f} µs, WAL"
            f" {statistics.median(kept['wal']):.0f} B per send ({len(kept['cpu'])} rounds)"
        )
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
