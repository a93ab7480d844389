"""Deliveries as a worker handles them: the claim with its lease, outcomes, dead targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from herald.domain import Delivery, DeliveryEvent, DeliveryState
from herald.outages import is_outage
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.guards import LEASE_RENEWAL, SET_ASIDE
from herald.storage.records import DeliveryUpdate
from herald.storage.repository import Repository
from herald.storage.rows import attempt_detail, event_row, to_delivery
from herald.storage.suppressions import SuppressionRepository
from herald.util import chunks

S = DeliveryState


DEVICE_GONE_REASON = "device deleted or deactivated before it could be sent"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim took (now `sending`, for this worker to send) and what it skipped
    (push deliveries whose device went away)."""

    claimed: list[Delivery]
    skipped: list[Delivery]


class DeliveryRepository(Repository):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        # Dead targets: an address a provider refused for good is suppressed.
        self.add_suppression = SuppressionRepository(database).add

    async def claim(
        self, delivery_ids: Sequence[str], lease_seconds: float, *, needs_device: bool = False
    ) -> Claim:
        """The only thing that makes a send happen: one atomic UPDATE ... RETURNING.

        A delivery is claimable when queued, or deferred and due. Two workers handed the
        same id (a redelivered message) race on this statement and exactly one wins; a
        delivery already sent is not claimable, so the duplicate message is a no-op.

        With `needs_device` (push), the same statement skips instead of claiming a delivery
        whose device was deleted or deactivated since it was planned, and logs the skip
        (one statement, where a check before the claim cost a transaction of its own per
        batch). The claim writes no other log event: the row keeps `claimed_at`, and the
        attempt's outcome event carries it.

        The statement commits on its own. When a row it returns cannot be read back (a bug,
        a bad value), the claim is undone before the error goes up, so the whole batch is
        claimable again: the worker then finds that row alone and sets it aside
        (roles.consume_loop). Should the undo itself fail, the lease runs out as after a
        worker's crash.
        """
        if not delivery_ids:
            return Claim([], [])
        now = self.clock.now()
        lease_until = now + timedelta(seconds=lease_seconds)
        ids = list(delivery_ids)
        gone = DEVICE_GONE_REASON if needs_device else None
        async with self.db.native() as native:
            try:
                rows = await native.claim(ids, lease_until, now, gone)
                found = [to_delivery(row) for row in rows]
            except Exception as error:
                if not is_outage(error):  # else the connection is gone: the lease runs out
                    await native.undo_claim(ids, lease_until, now)
                raise
        return Claim(
            [x for x in found if x.state == S.SENDING], [x for x in found if x.state == S.SKIPPED]
        )

    async def extend_leases(self, delivery_ids: Sequence[str], lease_seconds: float) -> int:
        """Renew the lease of deliveries a live worker is still sending (or recording), so
        a slow provider or a long batch is not taken for a dead worker."""
        if not delivery_ids:
            return 0
        now = self.clock.now()
        async with self.db.transaction() as db:
            result = await db.execute(
                t.deliveries.update()
                .where(
                    self.dialect.among(t.deliveries.c.id, delivery_ids),
                    LEASE_RENEWAL.holds(t.deliveries.c.state),
                )
                .values(lease_until=now + timedelta(seconds=lease_seconds))
            )
        return int(result.rowcount)

    async def record_outcomes(self, updates: Sequence[DeliveryUpdate]) -> int:
        """Record what happened to claimed deliveries, with their events, together (on
        PostgreSQL in one statement). Only deliveries still `sending` change (a late answer
        for a delivery whose lease expired and was recovered is logged but does not
        overwrite). A send the row tells by itself (DeliveryUpdate.told_by_row) sets the
        row's `sent_at` instead of writing its event."""
        if not updates:
            return 0
        now = self.clock.now()
        events = [
            event_row(
                DeliveryEvent(
                    u.delivery_id,
                    u.notification_id,
                    u.state,
                    now,
                    attempt_detail(
                        u.attempt, u.claimed_at, u.provider_message_id, u.last_error, u.detail
                    ),
                    u.provider,
                )
            )
            for u in updates
        ]
        async with self.db.native() as native:
            return await native.record_outcomes(updates, events, now)

    async def get(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        found: list[Delivery] = []
        async with self.db.reading() as db:
            for chunk in chunks(list(delivery_ids), self.db.batch_rows):
                rows = await db.execute(
                    sa.select(t.deliveries).where(self.dialect.among(t.deliveries.c.id, chunk))
                )
                found.extend(to_delivery(row) for row in rows)
        return found

    async def set_aside(self, delivery_ids: Sequence[str], reason: str) -> int:
        """Deliveries a worker cannot process become `failed` with the reason (and an
        event); a delivery already final keeps its state."""
        if not delivery_ids:
            return 0
        d = t.deliveries.c
        now = self.clock.now()
        async with self.db.transaction() as db:
            rows = list(
                await db.execute(
                    t.deliveries.update()
                    .where(self.dialect.among(d.id, delivery_ids), SET_ASIDE.holds(d.state))
                    .values(
                        state=S.FAILED.value, last_error=reason, lease_until=None, updated_at=now
                    )
                    .returning(d.id, d.notification_id)
                )
            )
            detail = {"reason": reason, "set_aside": True}
            await self.dialect.insert_events(
                db,
                [
                    event_row(DeliveryEvent(r.id, r.notification_id, S.FAILED, now, detail))
                    for r in rows
                ],
            )
        return len(rows)

    async def deactivate_addresses(self, reasons: dict[str, str]) -> None:
        """Mark channel addresses inactive (address id -> the provider's reason: a webhook
        endpoint that answered 410 Gone)."""
        async with self.db.transaction() as db:
            await db.execute(
                t.channel_addresses.update()
                .where(t.channel_addresses.c.id == sa.bindparam("b_id"))
                .values(
                    active=False,
                    deactivated_reason=sa.bindparam("b_reason"),
                    updated_at=self.clock.now(),
                ),
                [{"b_id": k, "b_reason": v} for k, v in reasons.items()],
            )

    async def deactivate_devices(self, reasons: dict[str, str]) -> None:
        """Mark dead tokens inactive (device id -> the provider's reason)."""
        if not reasons:
            return
        async with self.db.transaction() as db:
            await db.execute(
                t.devices.update()
                .where(t.devices.c.id == sa.bindparam("b_id"))
                .values(
                    active=False,
                    deactivated_reason=sa.bindparam("b_reason"),
                    updated_at=self.clock.now(),
                ),
                [{"b_id": k, "b_reason": v} for k, v in reasons.items()],
            )
