"""The outbox, as the relay drains it: the notification rows themselves, read by position,
and the outbox table for the rare records that are not a new notification.

A notification is relayable from the moment its insert commits: nothing else is written
for the relay (migration 0014 says why). Each lane (urgent, bulk) has a position in
relay_positions, the (relay_xid, relay_seq) of the last notification published; a pass
reads the accepted notifications after it, in that order, and moves it forward in the same
transaction once the publish succeeded. A crash in between publishes them again, which the
deterministic delivery ids absorb.

Why (relay_xid, relay_seq) and not a sequence alone: on PostgreSQL a sequence value is taken
before its transaction commits, so a row that commits late would have a number below a
position already passed. The relay reads only rows whose transaction is below the snapshot's
xmin (every such transaction has finished, so the set before that horizon is final) and
orders them by transaction id first. SQLite has one writer at a time, so the order of the
inserts is the order of the commits. What differs lives in the driver connection
(herald.storage.native: `relay_take`, `relay_advance`).

On PostgreSQL a pass takes each lane's advisory lock if it is free: two relays never
publish one lane at once, and a relay that finds a lane locked does the other (native.py,
RELAY_LOCK_LANES_POSTGRES and RELAY_TAKE_POSTGRES, say why not FOR UPDATE SKIP LOCKED).
Reading below the horizon, a pass may see rows it cannot take yet; it says so
(`RelayBatch.held_back`), so that the relay comes back for them soon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import NotificationState
from herald.storage import schema as t
from herald.storage.native import RelayBatch
from herald.storage.repository import Repository


class OutboxRepository(Repository):
    @asynccontextmanager
    async def take(self, limit: int) -> AsyncIterator[RelayBatch]:
        """Up to `limit` records per lane, urgent ones first, as (topic, key, payload) in
        `records`, and whether rows wait that this pass could not see yet (`held_back`).
        When the block exits cleanly the positions move past them (and their outbox-table
        rows are gone); when it raises, nothing moved and the next pass takes them again."""
        async with self.db.native() as native, native.transaction():
            batch = await native.relay_take(limit)
            yield batch
            await native.relay_advance(batch.positions)

    async def size(self) -> int:
        """How many records wait for the relay."""
        async with self.db.reading() as db:
            depth, _ = await read_backlog(db)
        return depth


async def read_backlog(db: AsyncConnection) -> tuple[int, datetime | None]:
    """(records waiting for the relay, the oldest one's created_at), on a reading
    connection: the notifications after their lane's position and the rows of the outbox
    table. The positions are read first and go in as values: SQLite, given them as a join
    or subqueries, searches the index by lane alone and counts through every notification
    the lane ever had (docs/benchmarks.md, "Figures behind code choices")."""
    p = t.relay_positions.c
    positions = [
        (int(lane), int(xid), int(seq))
        for lane, xid, seq in await db.execute(sa.select(p.lane, p.position_xid, p.position_seq))
    ]
    row = (await db.execute(_backlog_query(positions))).one()
    return int(row[0]), row[1]


def _backlog_query(positions: list[tuple[int, int, int]]) -> sa.Select[Any, Any]:
    n = t.notifications.c
    after_positions = [
        sa.select(n.created_at).where(
            n.state == NotificationState.ACCEPTED.value,
            n.lane_order == lane,
            sa.tuple_(n.relay_xid, n.relay_seq) > sa.tuple_(sa.literal(xid), sa.literal(seq)),
        )
        for lane, xid, seq in positions
    ]
    waiting = sa.union_all(*after_positions, sa.select(t.outbox.c.created_at)).subquery()
    return sa.select(sa.func.count(), sa.func.min(waiting.c.created_at))
