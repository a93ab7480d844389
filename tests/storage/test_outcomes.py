"""record_outcomes changes only what a worker's answer may change."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from herald.domain import Delivery
from herald.domain import DeliveryState as S
from herald.runtime import Runtime
from herald.storage import DeliveryUpdate
from herald.storage import schema as t
from tests.storage.test_concurrency import make_deliveries


async def test_an_answer_changes_a_delivery_still_sending_or_settles_an_unknown_one(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    storage = runtime.storage
    ids = sorted(await make_deliveries(api, runtime, 5))
    claimed = {d.id: d for d in (await storage.deliveries.claim(ids, 30)).claimed}
    sending, answered, unknown_sent, unknown_retry, recovered = ids
    await storage.deliveries.record_outcomes([_update(claimed[answered], S.SENT, "first")])
    async with storage.database.transaction() as db:  # what lease recovery does to an expired claim
        await db.execute(
            t.deliveries.update()
            .where(t.deliveries.c.id.in_([unknown_sent, unknown_retry]))
            .values(state=S.UNKNOWN.value)
        )
        await db.execute(
            t.deliveries.update().where(t.deliveries.c.id == recovered).values(state=S.QUEUED.value)
        )
    due = storage.database.clock.now() + timedelta(minutes=5)

    changed = await storage.deliveries.record_outcomes(
        [
            _update(claimed[sending], S.SENT, "m-sending"),
            _update(claimed[answered], S.FAILED, "second answer"),
            _update(claimed[unknown_sent], S.SENT, "m-late"),
            _update(claimed[unknown_retry], S.DEFERRED, None, due_at=due),
            _update(claimed[recovered], S.SENT, "m-stale"),
        ]
    )

    async with storage.database.engine.connect() as db:
        rows = await db.execute(
            sa.select(t.deliveries.c.id, t.deliveries.c.state, t.deliveries.c.provider_message_id)
        )
        now = {row.id: (row.state, row.provider_message_id) for row in rows}
    assert now == {
        sending: ("sent", "m-sending"),
        answered: ("sent", "first"),
        unknown_sent: ("sent", "m-late"),
        unknown_retry: ("unknown", None),  # never re-queued: it may have been sent
        recovered: ("queued", None),
    }
    assert changed == 2
    async with storage.database.engine.connect() as db:
        logged = await db.execute(
            sa.select(t.delivery_events.c.delivery_id, t.delivery_events.c.state).where(
                t.delivery_events.c.delivery_id.in_(ids)
            )
        )
        answers = sorted((row.delivery_id, row.state) for row in logged)
    # Every answer is logged, the late and the stale ones too, though they changed nothing;
    # but a send of the claimed attempt is told by its row (`sent_at`), not by an event.
    assert answers == sorted(
        [
            (answered, "failed"),
            (unknown_sent, "sent"),
            (unknown_retry, "deferred"),
            (recovered, "sent"),
        ]
    )
    async with storage.database.engine.connect() as db:
        told = await db.execute(
            sa.select(t.deliveries.c.id).where(
                t.deliveries.c.id.in_(ids), t.deliveries.c.sent_at.is_not(None)
            )
        )
        assert sorted(row.id for row in told) == sorted([sending, answered])


async def test_an_outcome_is_not_recorded_without_its_event(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """The state change and the log event are written together or not at all."""
    storage = runtime.storage
    ids = await make_deliveries(api, runtime, 1)
    [delivery] = (await storage.deliveries.claim(ids, 30)).claimed
    # The event needs the notification's id (NOT NULL); the state change does not. (A
    # failure: a plain send writes no event.)
    unloggable = DeliveryUpdate(delivery.id, None, S.FAILED, provider="p")  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"(?i)not null|null value"):
        await storage.deliveries.record_outcomes([unloggable])
    [after] = await storage.deliveries.get([delivery.id])
    assert after.state == S.SENDING


def _update(
    delivery: Delivery, state: S, message_id: str | None, due_at: datetime | None = None
) -> DeliveryUpdate:
    return DeliveryUpdate(
        delivery.id,
        delivery.notification_id,
        state,
        provider="inbox",
        provider_message_id=message_id,
        due_at=due_at,
    )
