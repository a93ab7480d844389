"""The migrations build exactly the schema the store queries (schema.py), on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from herald.runtime import Runtime
from herald.storage.schema import metadata


def _differences(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection)
    return [diff for diff in compare_metadata(context, metadata) if not _is_partition(diff)]


def _is_partition(diff: tuple[Any, ...]) -> bool:
    """PostgreSQL keeps the delivery log in daily partitions (tables and their indexes)."""
    table = diff[1] if diff[0] == "remove_table" else getattr(diff[1], "table", None)
    return table is not None and table.name.startswith("delivery_events_")


async def test_migrations_match_the_schema(runtime: Runtime) -> None:
    async with runtime.storage.database.engine.connect() as db:
        assert await db.run_sync(_differences) == []
