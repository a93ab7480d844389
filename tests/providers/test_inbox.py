"""The in-app provider: storing the item is delivering it; the live update is extra.

A live update that fails (PostgreSQL restarted under the NOTIFY connection) once failed
the whole send: the delivery was retried and the item stored again on every retry, one
more copy of the same notification in the user's inbox each time (`herald chaos` counted
hundreds after a database restart)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from herald.domain import Channel, DeliveryState
from herald.live import PostgresHub
from herald.providers.inbox import InboxProvider
from herald.runtime import Runtime
from tests.fixtures.herald import eventually
from tests.workers.test_worker import route_one, worker_for


class DownHub:
    """A live hub whose every publish fails, as a closed NOTIFY connection did."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, user_id: str, event: dict[str, Any]) -> None:
        self.attempts += 1
        raise asyncpg.InterfaceError("connection is closed")


async def test_a_failed_live_update_neither_fails_nor_repeats_the_delivery(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    delivery_id = await route_one(api, runtime, ["in_app"])
    hub = DownHub()
    provider = InboxProvider(runtime.storage.inbox, hub, runtime.clock)  # type: ignore[arg-type]
    worker = worker_for(runtime, Channel.IN_APP, provider)
    await worker.process([delivery_id])
    await worker.process([delivery_id])  # the bus hands the message out again
    (delivery,) = await runtime.storage.deliveries.get([delivery_id])
    assert (delivery.state, delivery.attempts) == (DeliveryState.DELIVERED, 1)
    assert hub.attempts == 1
    items = (await api.get("/v1/users/u1/inbox")).json()["items"]
    assert [(i["delivery_id"], i["sends"]) for i in items] == [(delivery_id, 1)]


async def _terminate(admin_url: str, *connections: Any) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        for connection in connections:
            await admin.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
    finally:
        await admin.close()


@pytest.mark.postgres
async def test_the_postgres_hub_outlives_its_connections_being_closed(
    postgres_admin_url: str,
) -> None:
    hub = PostgresHub(postgres_admin_url)
    await hub.start()
    try:
        async with hub.subscribe("u1") as queue:
            await _terminate(postgres_admin_url, hub._listener, hub._publisher)

            async def delivered() -> dict[str, Any] | None:
                # Publishing reconnects the publisher at once; the listener comes back by
                # itself, and from then on each publish reaches the subscriber.
                await hub.publish("u1", {"id": "item-1"})
                try:
                    return await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    return None

            assert await eventually(delivered, timeout=30) == {"id": "item-1"}
    finally:
        await hub.close()
