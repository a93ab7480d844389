"""The embedded backend: SQLite in WAL mode, one connection shared by the process.

SQLite takes one writer at a time; a single pooled connection serialises Herald's own
transactions instead of letting them collide on the file lock.
"""

from __future__ import annotations

import os
import stat
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
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_files(Path(path.split("?", 1)[0]))
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


def _private_files(database: Path) -> None:
    """The database holds API key hashes, addresses and (unless it comes from the
    environment) the token-signing secret: only the owner may read it. A directory Herald
    creates is 0700; the database file is created 0600 before SQLite opens it, and SQLite
    gives its -wal and -shm files the database's permissions. Files of an older Herald are
    narrowed to 0600 on the next start."""
    directory = database.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is masked by the umask
    if not database.exists():
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    for name in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if name.exists() and stat.S_IMODE(name.stat().st_mode) & 0o077:
            name.chmod(0o600)


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
