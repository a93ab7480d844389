"""The base of every repository: the database it works on, its dialect and its clock."""

from __future__ import annotations

from datetime import timedelta

from herald.clock import Clock
from herald.outages import is_outage
from herald.storage.database import Database


class Repository:
    def __init__(self, database: Database) -> None:
        self.db = database
        self.dialect = database.dialect

    @property
    def clock(self) -> Clock:
        return self.db.clock

    async def _probe_due(self, sql: str, within_seconds: float = 0.0) -> bool:
        """Whether a periodic pass would find work now, or within the next `within_seconds`:
        `sql` reads one row with a boolean `due` for the time $1, on the driver. An outage
        answers yes, so the pass runs and meets it as it always has (logged, tried again
        next interval)."""
        at = self.clock.now() + timedelta(seconds=within_seconds)
        try:
            async with self.db.native() as native:
                rows = await native.fetch(sql, native.at(at))
        except Exception as error:
            if not is_outage(error):
                raise
            return True
        return bool(rows and rows[0]["due"])
