"""`herald dlq list|replay` against the configured (embedded) database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from herald.config import Settings
from herald.storage import open_storage
from herald.storage import schema as t
from tests.test_cli import herald


async def _insert_dead_letter(database_url: str) -> None:
    storage = open_storage(database_url)
    now = datetime.now(UTC)
    try:
        async with storage.database.transaction() as db:
            await db.execute(
                t.deliveries.insert().values(
                    id="d-dead",
                    notification_id="n1",
                    user_id="42",
                    channel="email",
                    target="ada@example.com",
                    target_ref="ada@example.com",
                    state="failed",
                    policy="at_least_once",
                    priority="normal",
                    category="billing",
                    payload={},
                    last_error="dead-lettered after 5 attempts: 503 from ses",
                    created_at=now,
                    updated_at=now,
                )
            )
    finally:
        await storage.database.close()


def test_dlq_lists_and_replays_once(herald_env: dict[str, str]) -> None:
    assert herald("migrate", env=herald_env).returncode == 0
    settings = Settings(data_dir=herald_env["HERALD_DATA_DIR"], database_url=None, api_key=None)
    asyncio.run(_insert_dead_letter(settings.effective_database_url))

    listed = herald("dlq", "list", env=herald_env)
    assert listed.returncode == 0, listed.stderr
    assert "d-dead" in listed.stdout
    assert "503 from ses" in listed.stdout
    assert "ada@example.com" not in listed.stdout  # the address is masked

    first = herald("dlq", "replay", "d-dead", "nope", env=herald_env)
    assert first.returncode == 0, first.stderr
    assert "d-dead  replayed" in first.stdout
    assert "nope  no such delivery" in first.stderr
    again = herald("dlq", "replay", "--all", env=herald_env)
    assert "0 replayed" in again.stdout
    assert "empty" in herald("dlq", "list", env=herald_env).stdout
    assert herald("dlq", "replay", env=herald_env).returncode == 2  # nothing named
