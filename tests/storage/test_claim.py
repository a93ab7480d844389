"""The claim: one statement that commits on its own, logs the push deliveries it skips, and
is undone when what it took cannot be read back."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from herald.domain import DeliveryState as S
from herald.runtime import Runtime
from herald.storage import schema as t
from herald.storage.deliveries import DEVICE_GONE_REASON
from tests.storage.test_concurrency import make_deliveries


async def _push_deliveries(api: httpx.AsyncClient, runtime: Runtime) -> dict[str, str]:
    """Two users with a device each and one push delivery each: user -> delivery id."""
    found = {}
    for user, token in (("kept", "ab" * 32), ("gone", "cd" * 32)):  # APNs tokens: hex
        await api.put(f"/v1/users/{user}", json={})
        device = await api.post(
            f"/v1/users/{user}/devices", json={"platform": "ios", "token": token}
        )
        assert device.status_code == 201, device.text
        accepted = await api.post(
            "/v1/notifications", json={"user_id": user, "title": "t", "channels": ["push"]}
        )
        await runtime.router().route([accepted.json()["id"]])
        (delivery,) = await runtime.storage.notifications.deliveries_of(accepted.json()["id"])
        found[user] = delivery.id
    return found


async def test_a_push_claim_skips_a_gone_device_and_logs_why(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    ids = await _push_deliveries(api, runtime)
    (device,) = (await api.get("/v1/users/gone/devices")).json()["items"]
    assert (await api.delete(f"/v1/users/gone/devices/{device['id']}")).status_code == 204

    claim = await runtime.storage.deliveries.claim(list(ids.values()), 30, needs_device=True)

    assert [d.id for d in claim.claimed] == [ids["kept"]]
    assert [(d.id, d.state) for d in claim.skipped] == [(ids["gone"], S.SKIPPED)]
    (gone,) = await runtime.storage.deliveries.get([ids["gone"]])
    assert (gone.state, gone.last_error, gone.lease_until) == (
        S.SKIPPED,
        DEVICE_GONE_REASON,
        None,
    )
    events = await runtime.storage.notifications.events_of(gone.notification_id)
    assert [(e.state, e.detail) for e in events if e.delivery_id == ids["gone"]][-1] == (
        S.SKIPPED,
        {"reason": DEVICE_GONE_REASON},
    )
    # The claimed one has no event yet: its outcome's event will carry the claim.
    assert [e.state for e in events if e.delivery_id == ids["kept"]] == []


@pytest.mark.expect_errors
async def test_a_claim_that_cannot_be_read_back_is_undone(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    ids = await make_deliveries(api, runtime, 3)
    async with runtime.storage.database.transaction() as db:  # a row no code can read back
        await db.execute(
            t.deliveries.update().where(t.deliveries.c.id == ids[1]).values(priority="bogus")
        )

    with pytest.raises(ValueError, match="bogus"):
        await runtime.storage.deliveries.claim(ids, 30)

    d = t.deliveries.c
    async with runtime.storage.database.reading() as db:
        rows = await db.execute(sa.select(d.id, d.state, d.attempts, d.lease_until))
        after = {row.id: (row.state, row.attempts, row.lease_until) for row in rows}
    assert after == dict.fromkeys(ids, ("queued", 0, None))
    # And claimable again, by the halves a worker tries next.
    claim = await runtime.storage.deliveries.claim([ids[0], ids[2]], 30)
    assert sorted(x.id for x in claim.claimed) == sorted([ids[0], ids[2]])
