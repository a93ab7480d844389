"""What providers report back through webhooks: later fates of deliveries, opt-outs and
opt-ins, and the ids of events already applied."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa

from herald.domain import Delivery, DeliveryEvent, DeliveryState
from herald.storage import schema as t
from herald.storage.database import Database
from herald.storage.guards import WEBHOOK
from herald.storage.records import ProviderReport
from herald.storage.repository import Repository
from herald.storage.rows import event_row, to_delivery
from herald.storage.suppressions import SuppressionRepository

S = DeliveryState


class FeedbackRepository(Repository):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.add_suppression = SuppressionRepository(database).add

    async def record_provider_events(
        self, reports: Sequence[ProviderReport]
    ) -> list[Delivery | None]:
        """Apply what provider webhooks reported: an event for each delivery found (by id,
        else by the provider's message id), and the new state where the state machine
        allows it. Returns the matched delivery per report (None when unknown)."""
        now = self.clock.now()
        matched: list[Delivery | None] = []
        async with self.db.transaction() as db:
            for report in reports:
                where = (
                    t.deliveries.c.id == report.delivery_id
                    if report.delivery_id
                    else t.deliveries.c.provider_message_id == report.provider_message_id
                )
                row = (await db.execute(sa.select(t.deliveries).where(where).limit(1))).first()
                if row is None or not (report.delivery_id or report.provider_message_id):
                    matched.append(None)
                    continue
                delivery = to_delivery(row)
                matched.append(delivery)
                event = DeliveryEvent(
                    delivery.id,
                    delivery.notification_id,
                    report.state,
                    now,
                    report.detail,
                    report.provider,
                )
                await self.dialect.insert_events(db, [event_row(event)])
                if (guard := WEBHOOK.get(delivery.state)) and report.state in guard.targets:
                    await db.execute(
                        t.deliveries.update()
                        .where(t.deliveries.c.id == delivery.id, guard.holds(t.deliveries.c.state))
                        .values(state=report.state.value, updated_at=now, last_error=report.error)
                    )
        return matched

    async def lift_opt_outs(self, channel: str, address: str, opted_in_at: datetime) -> int:
        """An opt-in (START) at `opted_in_at` lifts the address's opt-out suppression unless
        that opt-out happened later (a replayed or late START never lifts a newer STOP)."""
        s = t.suppressions
        async with self.db.transaction() as db:
            result = await db.execute(
                s.delete().where(
                    s.c.channel == channel,
                    s.c.address == address,
                    s.c.reason.startswith("opt-out"),
                    sa.or_(s.c.event_at.is_(None), s.c.event_at <= opted_in_at),
                )
            )
        return int(result.rowcount or 0)

    async def claim_webhook_events(
        self, provider: str, keep_until: Mapping[str, datetime]
    ) -> set[str]:
        """Record provider event ids (id -> until when to remember it); returns the ids not
        seen before. An id already present is a retry or a replay of that event."""
        if not keep_until:
            return set()
        w = t.webhook_events
        now = self.clock.now()
        rows = [
            {"provider": provider, "event_id": event_id, "received_at": now, "keep_until": until}
            for event_id, until in keep_until.items()
        ]
        async with self.db.transaction() as db:
            inserted = await db.execute(
                self.dialect.insert(w)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["provider", "event_id"])
                .returning(w.c.event_id)
            )
            return {str(event_id) for (event_id,) in inserted}

    async def forget_webhook_events(self, provider: str, event_ids: Iterable[str]) -> None:
        """Undo a claim whose events could not be applied (the provider's retry applies
        them)."""
        ids = list(event_ids)
        if not ids:
            return
        w = t.webhook_events
        async with self.db.transaction() as db:
            await db.execute(
                w.delete().where(w.c.provider == provider, self.dialect.among(w.c.event_id, ids))
            )
