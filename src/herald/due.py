"""Is anything due? One cheap statement the scheduler asks before its pass.

A scheduler pass is three to five transactions (release due deferrals, expire leases at
each policy, close digest windows), four times a second. When nothing is due, and that is
nearly always on a quiet fleet, this single read of three indexes answers it instead
(ix_deliveries_state_due, ix_deliveries_state_lease, ix_digests_state_end).

The conditions are exactly those of the pass's statements (Store.release_due,
Store.expire_leases, ShapingStore._close_due_digests), so "nothing due" here means the pass
would have changed nothing. (Kept beside the scheduler while the storage layer is being
rewritten; it belongs with the deliveries repository's scheduler statements.)
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from herald.domain import DeliveryState
from herald.storage import schema as t

_NOW = sa.bindparam("now", type_=t.UtcDateTime)
_d = t.deliveries.c
_g = t.digests.c
DIGEST_OPEN = "open"  # herald.storage.shaping.OPEN

ANYTHING_DUE = sa.select(
    sa.or_(
        sa.exists().where(_d.state == DeliveryState.DEFERRED.value, _d.due_at <= _NOW),
        sa.exists().where(_d.state == DeliveryState.SENDING.value, _d.lease_until < _NOW),
        sa.exists().where(_g.state == DIGEST_OPEN, _g.window_end <= _NOW),
    )
)


class DueProbe:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.asked = 0  # diagnostics, tests

    async def anything_due(self, now: datetime) -> bool:
        self.asked += 1
        async with self.engine.connect() as db:
            return bool(await db.scalar(ANYTHING_DUE, {"now": now}))
