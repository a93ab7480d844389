"""The embedded backend: SQLite in WAL mode, one connection shared by the process.

SQLite takes one writer at a time; a single pooled connection serialises Herald's own
transactions instead of letting them collide on the file lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from herald.clock import SYSTEM_CLOCK, Clock
from herald.storage.store import Store
from herald.util import json_dumps


class SqliteStore(Store):
    @classmethod
    def connect(cls, url: str, clock: Clock = SYSTEM_CLOCK) -> SqliteStore:
        async_url = url.replace("sqlite://", "sqlite+aiosqlite://", 1)
        path = async_url.split("///", 1)[1] if "///" in async_url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            async_url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
        )
        event.listen(engine.sync_engine, "connect", _pragmas)
        return cls(engine, clock)


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=10000",
        "temp_store=MEMORY",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
