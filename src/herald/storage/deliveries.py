"""Deliveries as a worker handles them: the claim with its lease, outcomes, dead targets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa

from herald.domain import Channel, Delivery, DeliveryEvent, DeliveryState
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.guards import CLAIM, DEVICE_GONE, LEASE_RENEWAL, SET_ASIDE
from herald.storage.records import DeliveryUpdate
from herald.storage.repository import Repository
from herald.storage.rows import event_row, to_delivery
from herald.storage.suppressions import SuppressionRepository
from herald.util import chunks

S = DeliveryState


class DeliveryRepository(Repository):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        # Dead targets: an address a provider refused for good is suppressed.
        self.add_suppression = SuppressionRepository(database).add

    async def claim(self, delivery_ids: Sequence[str], lease_seconds: float) -> list[Delivery]:
        """The only thing that makes a send happen: one atomic UPDATE ... RETURNING.

        A delivery is claimable when queued, or deferred and due. Two workers handed the
        same id (a redelivered message) race on this statement and exactly one wins; a
        delivery already sent is not claimable, so the duplicate message is a no-op.
        """
        if not delivery_ids:
            return []
        now = self.clock.now()
        claimable = sa.and_(
            CLAIM.holds(t.deliveries.c.state),
            sa.or_(t.deliveries.c.state != S.DEFERRED.value, t.deliveries.c.due_at <= now),
        )
        async with self.db.transaction() as db:
            rows = await db.execute(
                t.deliveries.update()
                .where(self.dialect.among(t.deliveries.c.id, delivery_ids), claimable)
                .values(
                    state=S.SENDING.value,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    attempts=t.deliveries.c.attempts + 1,
                    updated_at=now,
                )
                .returning(*t.deliveries.c)
            )
            claimed = [to_delivery(row) for row in rows]
            await self.dialect.insert_events(
                db,
                [
                    event_row(
                        DeliveryEvent(
                            d.id, d.notification_id, S.SENDING, now, {"attempt": d.attempts}
                        )
                    )
                    for d in claimed
                ],
            )
        return claimed

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

    async def skip_without_device(self, delivery_ids: Sequence[str]) -> int:
        """Push deliveries still waiting (queued, or deferred) whose device was deleted or
        deactivated since they were planned are skipped, with an event, so no worker
        claims them (the push worker calls this right before its claim)."""
        if not delivery_ids:
            return 0
        now = self.clock.now()
        d, devices = t.deliveries.c, t.devices.c
        live_device = sa.select(devices.id).where(devices.id == d.target_ref, devices.active)
        reason = "device deleted or deactivated before it could be sent"
        async with self.db.transaction() as db:
            rows = list(
                await db.execute(
                    t.deliveries.update()
                    .where(
                        self.dialect.among(d.id, delivery_ids),
                        d.channel == Channel.PUSH.value,
                        DEVICE_GONE.holds(d.state),
                        ~sa.exists(live_device),
                    )
                    .values(state=S.SKIPPED.value, last_error=reason, due_at=None, updated_at=now)
                    .returning(d.id, d.notification_id)
                )
            )
            await self.dialect.insert_events(
                db,
                [
                    event_row(
                        DeliveryEvent(r.id, r.notification_id, S.SKIPPED, now, {"reason": reason})
                    )
                    for r in rows
                ],
            )
        return len(rows)

    async def record_outcomes(self, updates: Sequence[DeliveryUpdate]) -> int:
        """Record what happened to claimed deliveries, with their events, in one
        transaction. Only deliveries still `sending` change (a late answer for a delivery
        whose lease expired and was recovered is logged but does not overwrite)."""
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
                    {
                        k: v
                        for k, v in {
                            **u.detail,
                            "error": u.last_error,
                            "provider_message_id": u.provider_message_id,
                        }.items()
                        if v is not None
                    },
                    u.provider,
                )
            )
            for u in updates
        ]
        async with self.db.transaction() as db:
            changed = await self.dialect.apply_outcomes(db, updates, now)
            await self.dialect.insert_events(db, events)
        return changed

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
