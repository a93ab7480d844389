"""Herald's PostgreSQL connections never keep the generic plan PostgreSQL's default would
make for a table as it was (herald.storage.dialect, PlanMode and SERVER_SETTINGS). With the
default, a statement executed five times while its table was nearly empty keeps a generic
plan that scans the whole table, and keeps it as the table grows until autovacuum analyzes
it: the router's and the workers' lookups by id read every notification and every delivery
of a new database for their first minute. Per execution, the lookup is planned for the
table as it is; generic, it is planned once without sequential scans. And which mode a
process gets follows from its roles (herald.process.postgres_plans)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from herald.process import postgres_plans
from herald.storage import PlanMode, Storage, open_storage

LOOKUP = "SELECT id FROM plan_probe WHERE id = ANY($1::text[])"


@pytest.fixture(params=list(PlanMode), ids=str)
async def planned_storage(
    request: pytest.FixtureRequest, postgres_test_url: str
) -> AsyncIterator[Storage]:
    storage = open_storage(postgres_test_url, plans=request.param)
    try:
        yield storage
    finally:
        await storage.database.close()


@pytest.mark.postgres
async def test_a_lookup_by_id_prepared_on_an_empty_table_reads_its_index_once_it_grew(
    planned_storage: Storage,
) -> None:
    async with planned_storage.database.native() as native:
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


@pytest.mark.postgres
async def test_the_connections_run_with_their_modes_settings(planned_storage: Storage) -> None:
    async with planned_storage.database.native() as native:
        connection = native.connection  # type: ignore[attr-defined]
        shown = {
            name: await connection.fetchval(f"SHOW {name}")
            for name in ("jit", "plan_cache_mode", "enable_seqscan")
        }
    generic = planned_storage.database.dialect.plans is PlanMode.GENERIC  # type: ignore[attr-defined]
    assert shown == {
        "jit": "off",
        "plan_cache_mode": "force_generic_plan" if generic else "force_custom_plan",
        "enable_seqscan": "off" if generic else "on",
    }


@pytest.mark.parametrize(
    ("configured", "roles", "plans"),
    [
        ("auto", ["relay"], "generic"),
        ("auto", ["router"], "generic"),
        ("auto", ["worker"], "generic"),
        ("auto", ["relay", "router", "worker"], "generic"),
        ("auto", ["api"], "per_execution"),
        ("auto", ["scheduler"], "per_execution"),
        ("auto", ["api", "relay", "router", "worker", "scheduler"], "per_execution"),  # serve
        ("per_execution", ["worker"], "per_execution"),
        ("generic", ["api"], "generic"),
    ],
)
def test_a_process_plans_by_its_roles_unless_configured(
    configured: str, roles: list[str], plans: str
) -> None:
    assert postgres_plans(configured, roles) == plans
