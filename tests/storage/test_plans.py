"""Herald's PostgreSQL connections plan each execution of a prepared statement for the
table as it is then, not once for the table as it was (herald.storage.dialect,
SERVER_SETTINGS). With PostgreSQL's default, a statement executed five times while its
table was nearly empty keeps a generic plan that scans the whole table, and keeps it as
the table grows until autovacuum analyzes it: the router's and the workers' lookups by id
read every notification and every delivery of a new database for their first minute."""

from __future__ import annotations

import pytest

from herald.storage import Storage

LOOKUP = "SELECT id FROM plan_probe WHERE id = ANY($1::text[])"


@pytest.mark.postgres
async def test_a_lookup_by_id_prepared_on_an_empty_table_reads_its_index_once_it_grew(
    postgres_storage: Storage,
) -> None:
    async with postgres_storage.database.native() as native:
        connection = native.connection  # type: ignore[attr-defined]
        await connection.execute(
            "CREATE TEMPORARY TABLE plan_probe (id text PRIMARY KEY, padding text)"
        )
        try:
            await connection.execute("ANALYZE plan_probe")  # analyzed while empty
            await connection.execute(f"PREPARE lookup (text[]) AS {LOOKUP}")
            for _ in range(6):  # past the five executions after which a plan may be kept
                await connection.fetch("EXECUTE lookup ('{a,b,c}')")
            await connection.execute(
                "INSERT INTO plan_probe SELECT 'n' || g, repeat('x', 200)"
                " FROM generate_series(1, 20000) AS g"
            )
            plan = "\n".join(
                row[0] for row in await connection.fetch("EXPLAIN EXECUTE lookup ('{n1,n2,n3}')")
            )
        finally:
            await connection.execute("DEALLOCATE lookup")  # asyncpg's own statements stay
            await connection.execute("DROP TABLE plan_probe")
    assert "Seq Scan" not in plan
    assert "plan_probe_pkey" in plan
