"""The notification rows as the relay's outbox: read by position, never skipping a row that
commits late, one relay per lane at a time, republished after a crash, and an index range
scan however many notifications lie behind the position."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import orjson
import pytest
import sqlalchemy as sa

from herald.bus.interface import Record
from herald.domain import Priority, User
from herald.relay import Relay
from herald.storage import Storage
from herald.storage.native import (
    RELAY_LANE_SQLITE,
    RELAY_LANES,
    RELAY_TAKE_POSTGRES,
    ROUTING_LOAD_SQL,
)
from herald.storage.statements import insert_notifications
from tests.fixtures.activity import counting_round_trips, counting_statements, explaining
from tests.fixtures.herald import eventually
from tests.router.test_poison import new_notification

BEHIND = 100_000


def ids(records: list[tuple[str, str, bytes]]) -> list[str]:
    return [orjson.loads(payload)["notification_id"] for _, _, payload in records]


async def accept(storage: Storage, *keys: str, priority: Priority = Priority.NORMAL) -> None:
    """Notifications of a user who was never written: the outbox does not look."""
    await storage.notifications.accept(
        [new_notification(k, "u", priority=priority) for k in keys], of_known_users=False
    )


async def taken(storage: Storage, limit: int = 1000) -> list[str]:
    async with storage.outbox.take(limit) as batch:
        return ids(batch.records)


async def held_back(storage: Storage) -> bool:
    async with storage.outbox.take(1000) as batch:
        assert batch.records == []
        return batch.held_back


async def relayed(storage: Storage, limit: int = 1000) -> list[str]:
    """The next pass that finds something: on PostgreSQL a write transaction of this
    database still open holds the relay's horizon back (docs/operations.md)."""
    result: list[str] = await eventually(lambda: taken(storage, limit))
    return result


@pytest.mark.postgres
async def test_a_notification_that_commits_late_is_relayed_after_it_commits(
    postgres_storage: Storage,
) -> None:
    """A takes its sequence number first but commits last. A relay reading "seq > position"
    would move past A's number when it publishes B, and never publish A."""
    database = postgres_storage.database
    now = postgres_storage.database.clock.now()
    still_open = contextlib.AsyncExitStack()
    async with database.transaction() as b:
        await b.execute(sa.text("SELECT pg_current_xact_id()"))  # B's transaction id is lower
        a = await still_open.enter_async_context(database.transaction())
        await insert_notifications(a, database.dialect, [new_notification("a", "u")], now)
        await insert_notifications(b, database.dialect, [new_notification("b", "u")], now)
    try:
        assert await relayed(postgres_storage) == ["n-b"]  # B committed, A is still open
    finally:
        await still_open.aclose()
    assert await relayed(postgres_storage) == ["n-a"]  # A committed
    assert await taken(postgres_storage) == []


@pytest.mark.postgres
async def test_a_write_transaction_open_in_another_database_does_not_hold_the_relay_back(
    postgres_storage: Storage, postgres_admin_url: str
) -> None:
    """Transaction ids are the server's, so the snapshot's xmin is held back by a write
    transaction in any database. Only this database's transactions can write notifications,
    so only they may hold the relay back (docs/operations.md, "The outbox")."""
    elsewhere = await asyncpg.connect(postgres_admin_url)
    try:
        async with elsewhere.transaction():
            other = int(await elsewhere.fetchval("SELECT pg_current_xact_id()::text::bigint"))
            await accept(postgres_storage, "while-another-database-writes")
            async with postgres_storage.database.native() as native:
                (row,) = await native.fetch(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin"
                )
            assert row["xmin"] <= other  # the server's horizon is held back by it
            assert await relayed(postgres_storage) == ["n-while-another-database-writes"]
            assert not await held_back(postgres_storage)
    finally:
        await elsewhere.close()


class ListBus:
    """A bus that keeps what is published (the relay's only use of a bus)."""

    def __init__(self) -> None:
        self.published: list[Record] = []

    async def publish(self, records: list[Record]) -> None:
        self.published.extend(records)

    def held_in_memory(self) -> int:
        return 0


@pytest.mark.postgres
async def test_a_relay_comes_back_soon_for_rows_an_open_transaction_holds_back(
    postgres_storage: Storage,
) -> None:
    """The wake-up is spent on a pass that cannot see the row yet; with a fallback poll of
    a minute, only the held-back check brings the relay back for it."""
    database = postgres_storage.database
    bus = ListBus()
    relay = Relay(postgres_storage.outbox, bus, idle_poll_seconds=60)  # type: ignore[arg-type]
    stop = asyncio.Event()
    async with database.transaction() as older:
        await older.execute(sa.text("SELECT pg_current_xact_id()"))  # open, with a lower xid
        await accept(postgres_storage, "late")
        assert await postgres_storage.outbox.size() == 1
        task = asyncio.create_task(relay.run(stop))
        relay.wakeup.set()  # the accept's wake-up
        await eventually(lambda: _passes_at_least(relay, 2))  # it keeps asking meanwhile
        assert bus.published == []
    try:
        await eventually(lambda: _published(bus))
    finally:
        stop.set()
        await task  # its pass ends, and commits the lane's new position, before it stops
    assert [orjson.loads(r.value)["notification_id"] for r in bus.published] == ["n-late"]
    assert await postgres_storage.outbox.size() == 0


async def _passes_at_least(relay: Relay, n: int) -> bool:
    return relay.passes >= n


async def _published(bus: ListBus) -> bool:
    return bool(bus.published)


@pytest.mark.parametrize(("batch", "passes"), [(10, 2), (3, 3)], ids=["less", "a-full-batch"])
async def test_a_relay_passes_again_at_once_only_after_a_full_batch(
    storage: Storage, batch: int, passes: int
) -> None:
    """Three rows, then a fourth with its wake-up. A pass that took less than a batch took
    all it could see: the next pass is the wake-up's. After a full batch the relay passes
    again at once (and finds nothing), then waits for the wake-up as well."""
    bus = ListBus()
    relay = Relay(storage.outbox, bus, batch=batch, idle_poll_seconds=60)  # type: ignore[arg-type]
    stop = asyncio.Event()
    await accept(storage, "a", "b", "c")
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _published_count(bus, 3))
        await eventually(lambda: _passes_at_least(relay, passes - 1))
        await accept(storage, "d")
        relay.wakeup.set()  # the accept's wake-up
        await eventually(lambda: _published_count(bus, 4))
    finally:
        stop.set()
        await task
    assert relay.passes == passes


async def _published_count(bus: ListBus, count: int) -> bool:
    return len(bus.published) >= count


async def test_a_pass_that_took_every_row_saw_nothing_held_back(storage: Storage) -> None:
    await accept(storage, "a")
    assert await storage.outbox.size() == 1
    async with storage.outbox.take(1000) as batch:
        assert (ids(batch.records), batch.held_back) == (["n-a"], False)
    assert not await held_back(storage)


@pytest.mark.postgres
async def test_a_pass_says_it_saw_rows_an_open_transaction_holds_back(
    postgres_storage: Storage,
) -> None:
    """Said by the pass itself, in its snapshot: a question asked after it ("at or above
    the horizon"), read once the older transaction had ended, said no (CI, 2026-12-02), and
    the relay slept through the row until its fallback poll."""
    async with postgres_storage.database.transaction() as older:
        await older.execute(sa.text("SELECT pg_current_xact_id()"))
        await accept(postgres_storage, "late")
        assert await held_back(postgres_storage)
    assert await relayed(postgres_storage) == ["n-late"]
    assert not await held_back(postgres_storage)


@pytest.mark.postgres
async def test_a_relay_does_not_take_a_lane_another_relay_is_publishing(
    postgres_storage: Storage,
) -> None:
    await accept(postgres_storage, *(f"k{n}" for n in range(10)))
    holding = asyncio.Event()
    release = asyncio.Event()

    async def first() -> list[str]:
        while True:
            async with postgres_storage.outbox.take(1000) as batch:
                if batch.records:
                    holding.set()
                    await release.wait()  # publishing, the lanes' positions locked
                    return ids(batch.records)
            await asyncio.sleep(0.05)  # the horizon was held back (see `relayed`)

    task = asyncio.create_task(first())
    await holding.wait()
    assert await taken(postgres_storage) == []  # skipped, not waited for
    release.set()
    assert len(await task) == 10
    assert await taken(postgres_storage) == []


async def test_a_crash_after_publishing_publishes_the_same_rows_again(storage: Storage) -> None:
    await accept(storage, "x", "y")
    published: list[str] = []

    async def publish_then_crash() -> None:
        async with storage.outbox.take(1000) as batch:
            published.extend(ids(batch.records))
            raise RuntimeError("the process dies before the position moves")

    while not published:  # (the horizon, see `relayed`)
        with pytest.raises(RuntimeError):
            await publish_then_crash()
    assert published == ["n-x", "n-y"]
    assert await relayed(storage) == ["n-x", "n-y"]
    assert await storage.outbox.size() == 0


async def test_urgent_notifications_go_first_and_the_limit_counts_both_lanes(
    storage: Storage,
) -> None:
    await accept(storage, *(f"b{n}" for n in range(5)), priority=Priority.LOW)
    await accept(storage, "otp", priority=Priority.CRITICAL)
    assert await relayed(storage, 3) == ["n-otp", "n-b0", "n-b1"]
    assert await relayed(storage, 3) == ["n-b2", "n-b3", "n-b4"]


@pytest.mark.parametrize("before", [None, "SELECT 1"], ids=["first-statement", "after-another"])
async def test_a_rolled_back_transaction_leaves_no_notification_to_relay(
    storage: Storage, before: str | None
) -> None:
    """On PostgreSQL SQLAlchemy begins its transaction on its first statement: before it,
    the insert goes through SQLAlchemy, after it on the driver, inside the transaction."""
    database = storage.database

    async def insert_then_fail() -> None:
        async with database.transaction() as db:
            if before is not None:
                await db.execute(sa.text(before))
            items = [new_notification("gone", "u")]
            await insert_notifications(db, database.dialect, items, database.clock.now())
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        await insert_then_fail()
    assert await storage.notifications.get("n-gone") is None
    assert await storage.outbox.size() == 0
    assert await taken(storage) == []


async def test_the_accept_is_one_round_trip_and_a_replay_reads_back_its_id(
    storage: Storage,
) -> None:
    """The users check is a condition of the insert: a notification of a user who does not
    exist is not written, and says so; a replay costs the read-back of its id."""
    await storage.directory.upsert_user(User("u"))
    database = storage.database
    with counting_statements(database) as through_sqlalchemy:
        with counting_round_trips(database) as first_trips:
            first = await storage.notifications.accept([new_notification("k", "u")])
        with counting_round_trips(database) as replay_trips:
            again = await storage.notifications.accept([new_notification("k", "u")])
        unknown = await storage.notifications.accept([new_notification("x", "nobody")])
    assert [(r.id, r.created) for r in first + again] == [("n-k", True), ("n-k", False)]
    assert (len(first_trips), len(replay_trips)) == (1, 2)
    assert [(r.id, r.created, r.unknown_user) for r in unknown] == [("", False, True)]
    assert [s for s in through_sqlalchemy if "notifications" in s] == []
    assert await storage.notifications.get("n-x") is None
    assert await relayed(storage) == ["n-k"]


async def test_a_seq_freed_by_an_erased_notification_is_not_given_below_the_position(
    storage: Storage,
) -> None:
    """SQLite's rowid would be: its newest rowid is reused once that row is deleted."""
    await accept(storage, "old")
    assert await relayed(storage) == ["n-old"]
    async with storage.database.transaction() as db:
        await db.execute(sa.text("DELETE FROM notifications WHERE id = 'n-old'"))
    await accept(storage, "new")
    assert await relayed(storage) == ["n-new"]


async def plan_of(storage: Storage, explain: str, *args: object) -> str:
    """What PostgreSQL prints for an EXPLAIN, run in one driver transaction."""
    async with storage.database.native() as native, native.transaction():
        return "\n".join(row["QUERY PLAN"] for row in await native.fetch(explain, *args))


async def insert_many(raw: asyncpg.Connection, prefix: str, count: int, state_sql: str) -> None:
    """`count` notifications '<prefix>1'... in one statement, their state from `state_sql`
    (an SQL expression of the series number `n`)."""
    await raw.execute(
        "INSERT INTO notifications (id, idempotency_key, request_hash, user_id, category,"
        " priority, content, state, created_at, lane_order) "
        f"SELECT $1 || n, $1 || n, '', 'u', 'default', 'normal', '{{}}', {state_sql}, now(), 1"
        " FROM generate_series(1, $2) AS n",
        prefix,
        count,
    )


@pytest.fixture
async def far_behind(postgres_storage: Storage, postgres_test_url: str) -> Storage:
    """BEHIND notifications already relayed (half routed, half still accepted: the router
    lags), with statistics that know it."""
    raw = await asyncpg.connect(postgres_test_url)
    try:
        await insert_many(
            raw, "old", BEHIND, "CASE WHEN n % 2 = 0 THEN 'routed' ELSE 'accepted' END"
        )
        await raw.execute(
            "UPDATE relay_positions SET (position_xid, position_seq) ="
            " (SELECT relay_xid, relay_seq FROM notifications"
            "  ORDER BY relay_xid DESC, relay_seq DESC LIMIT 1) WHERE lane = 1"
        )
        await raw.execute("ANALYZE notifications")
    finally:
        await raw.close()
    return postgres_storage


@pytest.mark.postgres
async def test_the_relay_reads_a_short_index_range_however_far_behind(
    far_behind: Storage,
) -> None:
    await accept(far_behind, "fresh")
    plan = await plan_of(
        far_behind, "EXPLAIN (ANALYZE, BUFFERS) " + RELAY_TAKE_POSTGRES, 500, list(RELAY_LANES)
    )
    assert "Index Scan using ix_notifications_relay" in plan, plan
    assert "Seq Scan on notifications" not in plan, plan
    assert await relayed(far_behind) == ["n-fresh"]
    assert await far_behind.outbox.size() == 0


SQLITE_RANGE = "USING INDEX ix_notifications_relay (lane_order=? AND (relay_xid,relay_seq)>(?,?))"


async def test_sqlite_reads_each_lane_from_its_position_not_from_its_start(
    embedded_storage: Storage,
) -> None:
    """A relay pass and the backlog read the index range after each lane's position. Given
    the position by a subquery or a join, SQLite searched the index by lane alone and
    walked every notification the lane ever had (docs/benchmarks.md, "Figures behind code
    choices")."""
    database = embedded_storage.database
    async with database.native() as native:
        rows = await native.fetch("EXPLAIN QUERY PLAN " + RELAY_LANE_SQLITE, 1, 0, 0, 10)
    assert SQLITE_RANGE in "\n".join(str(row["detail"]) for row in rows)
    with explaining(database, lambda statement: "relay_xid" in statement) as plans:
        await embedded_storage.outbox.size()
    assert [plan.count(SQLITE_RANGE) for plan in plans] == [len(RELAY_LANES)], plans


WAITING = 20_000


@pytest.fixture
async def router_behind(postgres_storage: Storage, postgres_test_url: str) -> Storage:
    """A flat-out burst: statistics taken while the table was empty, then WAITING accepted
    notifications the router has not read yet."""
    raw = await asyncpg.connect(postgres_test_url)
    try:
        await raw.execute("ANALYZE notifications")
        await insert_many(raw, "w", WAITING, "'accepted'")
    finally:
        await raw.close()
    return postgres_storage


@pytest.mark.postgres
async def test_the_router_reads_its_batch_by_id_however_many_wait(
    router_behind: Storage,
) -> None:
    """The router's read by an array of ids must not go through the relay's index: when that
    index held the accepted rows alone, the planner took it for the router's `state =
    'accepted'` and read every waiting row for each batch (150 ms a batch in a flat-out
    benchmark; migration 0014)."""
    batch = [f"w{n}" for n in range(1, WAITING, WAITING // 300)]
    plan = await plan_of(router_behind, "EXPLAIN " + ROUTING_LOAD_SQL, batch)
    assert "ix_notifications_relay" not in plan, plan
