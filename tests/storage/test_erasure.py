"""DELETE /v1/users/{id} erases everything Herald holds about the user. The test walks the
schema (storage/schema.py): every table is either keyed by user_id, reached through such a
table, or named here as holding no one's personal data, so a new table cannot be forgotten."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from herald.runtime import Runtime
from herald.storage import schema as t

# Tables without a user_id column whose rows belong to a user through another table:
# table -> (its column, the parent table, the parent's column).
THROUGH = {
    "delivery_events": ("notification_id", "notifications", "id"),
    "digest_items": ("digest_id", "digests", "id"),
    "workflow_run_steps": ("run_id", "workflow_runs", "id"),
}
PARENT_IDS = {
    "notifications": lambda user: f"n-{user}",
    "digests": lambda user: f"d-{user}",
    "workflow_runs": lambda user: f"r-{user}",
}
# Tables that hold no one's personal data (or must outlive the user), and why.
NOT_PERSONAL = {
    "api_keys": "the callers' keys",
    "settings_kv": "Herald's own settings",
    "templates": "shared content",
    "categories": "shared configuration",
    "frequency_caps": "shared configuration",
    "broadcasts": "the broadcast itself; its recipients are user-keyed",
    "outbox": "transient bus records, gone once relayed",
    "relay_positions": "how far the relay has published each lane: two numbers per lane",
    "sweep_positions": "how far the sweep has found notifications routed: two numbers per lane",
    "suppressions": "kept on purpose: an address that bounced or said STOP stays suppressed",
    "webhook_events": "provider event ids seen, kept to refuse replays; no address or user",
    "workflows": "shared configuration",
}


def test_every_table_is_classified() -> None:
    for table in t.metadata.sorted_tables:
        keyed = "user_id" in table.c or table.name == "users"
        kinds = [keyed, table.name in THROUGH, table.name in NOT_PERSONAL]
        assert kinds.count(True) == 1, (
            f"table {table.name!r}: is it erased with the user? Give it a user_id column, "
            "or add it to THROUGH or NOT_PERSONAL in this test"
        )


def _value(column: sa.Column[Any], key: str) -> Any:
    """A value for any column, from its type (the rows are the test's, not Herald's)."""
    kind = column.type
    if isinstance(kind, t.UtcDateTime):
        return datetime.now(UTC)
    python = getattr(kind, "python_type", None) if not isinstance(kind, sa.JSON) else dict
    if isinstance(kind, sa.JSON) or python is dict:
        return {}
    if python is bool:
        return True
    if python is int:
        return 1
    if python is bytes:
        return b""
    return f"{key}-{uuid.uuid4().hex[:8]}"[: getattr(kind, "length", None) or 64]


def _row(table: sa.Table, key: str, fixed: dict[str, Any]) -> dict[str, Any]:
    return {
        c.name: fixed[c.name] if c.name in fixed else _value(c, key)
        for c in table.c
        if c.name in fixed or not (c.nullable or (c.autoincrement is True and c.primary_key))
        if not (c.primary_key and isinstance(c.type, sa.Integer))
    }


async def _seed(runtime: Runtime, user: str) -> None:
    """One row in every table that belongs to `user`."""
    parents = {name: make(user) for name, make in PARENT_IDS.items()}
    async with runtime.storage.database.transaction() as db:
        await db.execute(t.users.insert().values(_row(t.users, user, {"id": user})))
        for table in t.metadata.sorted_tables:
            if "user_id" not in table.c:
                continue
            fixed: dict[str, Any] = {"user_id": user}
            if table.name in parents:
                fixed["id"] = parents[table.name]
            await db.execute(table.insert().values(_row(table, user, fixed)))
        for name, (column, parent, _) in THROUGH.items():
            table = t.metadata.tables[name]
            await db.execute(table.insert().values(_row(table, user, {column: parents[parent]})))


async def _held(runtime: Runtime, user: str) -> dict[str, int]:
    """Rows about `user`, per table."""
    counts: dict[str, int] = {}
    async with runtime.storage.database.reading() as db:
        for table in t.metadata.sorted_tables:
            if table.name == "users":
                where = table.c.id == user
            elif "user_id" in table.c:
                where = table.c.user_id == user
            elif table.name in THROUGH:
                column, parent, _ = THROUGH[table.name]
                # the parent's row is gone after the erasure: match on the id it was seeded with
                where = table.c[column] == PARENT_IDS[parent](user)
            else:
                continue
            counts[table.name] = int(
                await db.scalar(sa.select(sa.func.count()).select_from(table).where(where)) or 0
            )
    return counts


async def test_deleting_a_user_erases_every_user_keyed_table(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    await (
        runtime.storage.scheduling.maintain()
    )  # the delivery log's partition for today (PostgreSQL)
    for user in ("gone", "kept"):
        await _seed(runtime, user)
    before = await _held(runtime, "gone")
    assert set(before.values()) == {1}, before
    assert (await api.delete("/v1/users/gone")).status_code == 204
    assert await _held(runtime, "gone") == dict.fromkeys(before, 0)
    assert await _held(runtime, "kept") == dict.fromkeys(before, 1)  # nobody else's rows


async def test_a_deleted_user_is_no_longer_a_topic_subscriber(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    for user in ("gone", "kept"):
        await api.put(f"/v1/users/{user}", json={"timezone": "UTC"})
        assert (await api.put(f"/v1/users/{user}/topics/news")).status_code in (200, 201, 204)
    assert (await api.delete("/v1/users/gone")).status_code == 204
    listed = (await api.get("/v1/topics/news/subscribers")).json()
    assert listed["items"] == [{"user_id": "kept"}]
