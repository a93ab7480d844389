from datetime import timedelta

import pytest
import sqlalchemy as sa

from herald.runtime import Runtime
from herald.storage import InvalidCursor
from herald.storage.activity import NotificationFilter
from tests.fixtures.activity import (
    EPOCH,
    counting_statements,
    explaining,
    insert_notifications,
    notification_rows,
)

ALL = NotificationFilter()


@pytest.mark.slow
async def test_paging_through_100000_notifications_costs_a_fixed_number_of_statements(
    runtime: Runtime,
) -> None:
    total, limit = 100_000, 500
    await insert_notifications(runtime.storage.database, notification_rows(total))
    seen: list[str] = []
    pages, cursor = 0, None
    with counting_statements(runtime.storage.database) as statements:
        while True:
            page = await runtime.storage.activity.notifications(ALL, limit, cursor)
            seen.extend(n.id for n in page.items)
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
    assert len(seen) == total
    assert len(set(seen)) == total
    assert seen[0] == f"n{total - 1:08d}"  # newest first
    assert pages == total // limit
    # One statement for the page and one for its deliveries, whatever the depth.
    assert len(statements) <= 2 * pages


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "depth"),
    [
        (ALL, 20),
        (NotificationFilter(user_id="u7"), 1),
        (NotificationFilter(category="billing"), 20),
    ],
    ids=["all", "by user", "by category"],
)
async def test_a_deep_page_walks_an_index_without_sorting(
    runtime: Runtime, backend: str, where: NotificationFilter, depth: int
) -> None:
    """The plan of a page far down 100,000 rows: an index read newest first up to the
    page's end, no sort of everything before it (what would make page 2,000 slow)."""
    database = runtime.storage.database
    await insert_notifications(database, notification_rows(100_000))
    if backend == "production":
        async with database.transaction() as db:
            await db.execute(sa.text("ANALYZE notifications"))
    page = await runtime.storage.activity.notifications(where, 500, None)
    for _ in range(depth):
        assert page.next_cursor is not None
        page = await runtime.storage.activity.notifications(where, 500, page.next_cursor)
    with explaining(database, "SELECT notifications.id") as plans:
        await runtime.storage.activity.notifications(where, 500, page.next_cursor)
    (plan,) = plans
    if backend == "production":
        assert "Index" in plan, plan
        assert "Sort" not in plan, plan
    else:
        assert "USING INDEX ix_notifications_" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


async def test_filters_and_paging_agree_with_the_rows(runtime: Runtime) -> None:
    rows = notification_rows(300, users=7)
    await insert_notifications(runtime.storage.database, rows)
    since, until = EPOCH + timedelta(seconds=10), EPOCH + timedelta(seconds=60)
    where = NotificationFilter(user_id="u3", category="billing", since=since, until=until)
    expected = sorted(
        (
            r["id"]
            for r in rows
            if r["user_id"] == "u3"
            and r["category"] == "billing"
            and since <= r["created_at"] < until
        ),
        reverse=True,
    )
    got, cursor = [], None
    while True:
        page = await runtime.storage.activity.notifications(where, 2, cursor)
        got += [n.id for n in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert got == expected
    assert len(expected) > 2


async def test_a_cursor_it_did_not_make_is_refused(runtime: Runtime) -> None:
    with pytest.raises(InvalidCursor):
        await runtime.storage.activity.notifications(ALL, 10, "not-a-cursor")
    with pytest.raises(InvalidCursor):
        await runtime.storage.activity.users(None, 10, "WyJ4IiwieSJd")  # two parts, not one
