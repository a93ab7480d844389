"""The base of every repository: the database it works on, its dialect and its clock."""

from __future__ import annotations

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

    async def _probe_due(self, sql: str) -> bool:
        """Whether a periodic pass would find work: `sql` reads one row with a boolean `due`
        for the time now ($1), on the driver. An outage answers yes, so the pass runs and
        meets it as it always has (logged, tried again next interval)."""
        try:
            async with self.db.native() as native:
                rows = await native.fetch(sql, native.at(self.clock.now()))
        except Exception as error:
            if not is_outage(error):
                raise
            return True
        return bool(rows and rows[0]["due"])
