"""The router's reads and writes: what a batch of notifications needs to be planned, and
the deliveries the plan makes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from herald.domain import (
    CapClaim,
    CategorySettings,
    ChannelAddress,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    Device,
    DigestFold,
)
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.native import (
    LOCK_ACCEPTED_SQL,
    MARK_ROUTED_SQL,
    QUEUED_OF_SQL,
    ROUTING_LOAD_SQL,
    ROUTING_ROW,
    SET_ASIDE_SQL,
    UNROUTED_OF_SQL,
    Record,
)
from herald.storage.records import Released, RoutingInput
from herald.storage.repository import Repository
from herald.storage.rows import (
    category_from_json,
    delivery_row,
    event_row,
    preferences_from_json,
    routing_detail,
    to_channel_address,
    to_device,
    to_notification,
    to_user,
)
from herald.storage.shaping import Shaping, ShapingChange, caps_by_channel

S = DeliveryState


class RoutingRepository(Repository):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.shaping = Shaping(database)

    async def load(self, notification_ids: Sequence[str]) -> list[RoutingInput]:
        """Everything the router needs for a batch, in one statement on the driver
        (herald.storage.native, ROUTING_LOAD_SQL), without a transaction: what is committed,
        so a category, template or cap changed a moment ago is what this batch sees."""
        async with self.db.native() as native:
            rows = await native.records(ROUTING_ROW, ROUTING_LOAD_SQL, list(notification_ids))
        of: dict[str, list[Record]] = {}
        for row in rows:
            of.setdefault(row.source, []).append(row)
        users = {row.id: row for row in of.get("user", [])}
        devices: dict[str, list[Device]] = {}
        for row in of.get("device", []):
            devices.setdefault(row.user_id, []).append(to_device(row))
        addresses: dict[str, list[ChannelAddress]] = {}
        for row in of.get("address", []):
            addresses.setdefault(row.user_id, []).append(to_channel_address(row))
        suppressed = {(row.channel, row.address) for row in of.get("suppression", [])}
        categories = {
            row.name: category_from_json(row.name, row.definition) for row in of.get("category", [])
        }
        templates = {row.name: dict(row.definition) for row in of.get("template", [])}
        channel_caps = caps_by_channel(of.get("cap", []))
        inputs = []
        for notification in map(to_notification, of.get("notification", [])):
            user_row = users.get(notification.user_id)
            inputs.append(
                RoutingInput(
                    notification=notification,
                    user=to_user(user_row) if user_row else None,
                    preferences=preferences_from_json(user_row.preferences if user_row else None),
                    devices=devices.get(notification.user_id, []),
                    category=categories.get(notification.category)
                    or CategorySettings(notification.category),
                    template=templates.get(notification.template)
                    if notification.template
                    else None,
                    suppressed=suppressed,
                    channel_caps=channel_caps,
                    addresses=addresses.get(notification.user_id, []),
                )
            )
        return inputs

    async def save(
        self,
        notification_ids: Sequence[str],
        deliveries: Sequence[Delivery],
        folds: Sequence[DigestFold] = (),
        claims: Sequence[CapClaim] = (),
    ) -> list[Released]:
        """Write the deliveries (idempotently), fold and count them (digests, caps), and
        write their first events. Returns every queued delivery of these notifications, so
        a rerun after a crash publishes what the first run wrote but did not publish.

        Only notifications still to route get deliveries: accepted, with none yet. Their
        deliveries are what says they were routed; the row of one planned no delivery at
        all is marked `routed` (migration 0018). A notification cancelled since it was
        loaded stays cancelled and gets no deliveries (its row is locked until the commit,
        so a cancel running now waits for this and then skips what it wrote). A batch no
        digest or cap shapes, nearly every one, is one statement on the driver
        (Native.route); shaping, rare, runs its Core statements inside a transaction on the
        driver (`_save_shaped`)."""
        if not notification_ids:
            return []
        if folds or claims:
            return await self._save_shaped(notification_ids, deliveries, folds, claims)
        now = self.clock.now()
        async with self.db.native() as native:
            rows = await native.route(
                list(notification_ids),
                now,
                [delivery_row(d, now) for d in deliveries],
                _first_events(deliveries, now),
            )
        return _released(rows)

    async def _save_shaped(
        self,
        notification_ids: Sequence[str],
        deliveries: Sequence[Delivery],
        folds: Sequence[DigestFold],
        claims: Sequence[CapClaim],
    ) -> list[Released]:
        """`save`, for a batch with digest folds or cap claims: one transaction on the
        driver, whose statements are the lock, the question which of the locked have no
        delivery yet, the mark of those planned none, the insert, the shaping's, the events
        and the read. The question follows the lock in a statement of its own: a router
        that waited for another one's lock then sees what that one wrote, and folds and
        counts nothing twice."""
        now = self.clock.now()
        ids = list(notification_ids)
        async with self.db.native_transaction() as (native, db):
            locked = [r["id"] for r in await native.fetch_locking(LOCK_ACCEPTED_SQL, ids)]
            routed = {r["id"] for r in await native.fetch(UNROUTED_OF_SQL, locked)}
            if empty := routed - {d.notification_id for d in deliveries}:
                await native.fetch(MARK_ROUTED_SQL, sorted(empty), native.at(now))
            if len(routed) < len(set(ids)):
                deliveries = [d for d in deliveries if d.notification_id in routed]
                folds = [f for f in folds if f.notification_id in routed]
                claims = [c for c in claims if c.notification_id in routed]
            new_ids = await native.insert_deliveries([delivery_row(d, now) for d in deliveries])
            if folds or claims:
                changes = await self.shaping.apply(db, folds, claims, new_ids)
                deliveries = await self._record_shaping(db, deliveries, changes, now)
            await native.append_events(
                [e for e in _first_events(deliveries, now) if e["delivery_id"] in new_ids]
            )
            # Of every notification in the batch, not only those routed now: a batch handed
            # out again after a crash between this commit and the publish finds them routed
            # already, and must still publish what the first run wrote. (A cancelled one
            # has no queued delivery left.)
            rows = await native.fetch(QUEUED_OF_SQL, ids)
        return _released(rows)

    async def set_aside(self, notification_ids: Sequence[str], reason: str) -> int:
        """Notifications the router cannot route become `failed`, with an event naming the
        reason in their delivery log (its delivery id is the notification's own: there is no
        delivery). Only those still to route: one routed or cancelled meanwhile keeps its
        state."""
        if not notification_ids:
            return 0
        now = self.clock.now()
        detail = {"reason": reason, "set_aside": True}
        async with self.db.native() as native, native.transaction():
            failed = [r["id"] for r in await native.fetch(SET_ASIDE_SQL, list(notification_ids))]
            await native.append_events(
                [event_row(DeliveryEvent(i, i, S.FAILED, now, detail)) for i in failed]
            )
        return len(failed)

    async def _record_shaping(
        self,
        db: AsyncConnection,
        deliveries: Sequence[Delivery],
        changes: dict[str, ShapingChange],
        now: datetime,
    ) -> Sequence[Delivery]:
        """Write what shaping changed; returns the deliveries as they now stand."""
        if not changes:
            return deliveries
        await db.execute(
            t.deliveries.update()
            .where(t.deliveries.c.id == sa.bindparam("delivery"))
            .values(
                state=sa.bindparam("new_state"),
                last_error=sa.bindparam("reason"),
                due_at=sa.bindparam("due"),
                updated_at=now,
            ),
            [
                {"delivery": k, "new_state": c.state.value, "reason": c.reason, "due": c.due_at}
                for k, c in changes.items()
            ],
        )
        return [
            replace(d, state=c.state, last_error=c.reason, due_at=c.due_at)
            if (c := changes.get(d.id))
            else d
            for d in deliveries
        ]


def _first_events(deliveries: Sequence[Delivery], now: datetime) -> list[dict[str, Any]]:
    """The log events routing writes: one per delivery whose plan said more than `queued`.
    A plain `queued` says nothing the delivery row does not: the log shows it from the
    row's created_at (NotificationRepository.events_of)."""
    return [
        event_row(DeliveryEvent(d.id, d.notification_id, d.state, now, detail, None))
        for d in deliveries
        if (detail := routing_detail(d)) or d.state != S.QUEUED
    ]


def _released(rows: Sequence[Mapping[str, Any]]) -> list[Released]:
    return [Released(r["id"], r["user_id"], r["channel"], r["priority"]) for r in rows]
